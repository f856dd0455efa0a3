"""Path patching: the effect of a sender head on receiver heads (or on the logits) along direct paths.

Following Wang et al. 2022 (IOI) and the EasyTransformer code used by Lv et al. 2024 (METHODS 2.2):

A. run the corrupted prompts and keep every head's z (the sender's new value: per prompt, or the
   mean over the corrupted batch with ``sender_value="mean"``);
B. run the clean prompts and keep every head's z (and MLP outputs if ``freeze_mlps``);
C. rerun the clean prompts with the sender's z set to its corrupted value and every *other* head of
   later layers frozen to its clean z (MLPs recomputed unless ``freeze_mlps``). With
   ``receivers="logits"`` the metric of this run is the answer: the sender's effect through the
   direct path (and MLPs) only. With receiver heads, keep the receivers' q/k/v inputs instead;
D. rerun the clean prompts with only the receivers' q/k/v (``receiver_input``) replaced by C's.

Senders are batched (stacked along the batch axis) and every run starts from the sender's layer
using the clean prefix cache; the result is exact, not an approximation. K/V of a receiver are
per KV head: under GQA patching a receiver's k/v also changes the query heads sharing that KV head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from headmine.capture import CaptureSpec, capturing, run_capture
from headmine.capture.hooks import HookSpec
from headmine.causal.ablation import reference_z
from headmine.causal.activation_patching import check_pairs
from headmine.causal.engine import run_with_interventions
from headmine.causal.fast_sweep import PrefixCache, RowwiseReplace, Variant, head_variants
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric, HeadEffects
from headmine.core.errors import InputError, UnsupportedModelError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel

RECEIVER_INPUTS = ("q", "k", "v")


def _parse_inputs(receiver_input: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(receiver_input.replace(",", "").strip()))
    if not parts or any(p not in RECEIVER_INPUTS for p in parts):
        raise InputError(f"receiver_input={receiver_input!r} is not understood", "use a combination of q, k, v, e.g. 'qkv' or 'k'")
    return parts


def _qkv_replace_hook(split: Callable[[torch.Tensor], torch.Tensor], mask: torch.Tensor, value: torch.Tensor) -> Callable:
    """Forward hook: replace the heads selected by ``mask`` [R, 1, n, 1] in a q/k/v projection output."""

    def fn(module, args, kwargs, output):
        new = output.clone()
        view = split(new)
        if view.data_ptr() != new.data_ptr() and view._base is not new:
            raise UnsupportedModelError("this model's q/k/v projection output cannot be patched per head in place",
                                        "path patching to receiver heads needs separate q/k/v projections")
        view.copy_(torch.where(mask.to(view.device), value.to(view.dtype), view))
        return new

    return fn


def _mlp_freeze_hook(mask_k: int, clean: torch.Tensor) -> Callable:
    def fn(module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output
        frozen = clean.to(out.dtype).repeat(mask_k, 1, 1)
        return (frozen, *output[1:]) if isinstance(output, tuple) else frozen

    return fn


def path_patching(
    loaded: LoadedModel,
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor | None,
    corrupted_ids: torch.Tensor,
    corrupted_mask: torch.Tensor | None,
    metric: AnswerMetric,
    *,
    senders: Sequence[HeadId] | None = None,
    receivers: str | Sequence[HeadId] = "logits",
    receiver_input: str = "qkv",
    sender_value: str = "corrupted",
    freeze_mlps: bool = False,
    max_rows: int = 256,
) -> HeadEffects:
    """Metric with the path sender -> receivers patched, for each sender head separately.

    Args:
        senders: heads to test (default: every head; with receiver heads, senders in layers at or
            after the last receiver layer are left NaN).
        receivers: ``"logits"`` (the final residual: direct path) or a list of receiver heads;
            each sender is patched into the receivers of later layers than its own.
        receiver_input: which receiver inputs are patched: any of ``q``, ``k``, ``v``.
        sender_value: ``"corrupted"`` (per prompt) or ``"mean"`` (mean over the corrupted batch).
        freeze_mlps: also freeze MLP outputs to their clean values in step C.

    Returns ``HeadEffects`` with ``values`` [L, H, B] indexed by sender, method ``path_patching``.
    """
    g = loaded.geometry
    clean_mask = torch.ones_like(clean_ids) if clean_mask is None else clean_mask
    corrupted_mask = torch.ones_like(corrupted_ids) if corrupted_mask is None else corrupted_mask
    check_pairs(clean_ids, clean_mask, corrupted_ids, corrupted_mask)
    if sender_value not in ("corrupted", "mean"):
        raise InputError(f"sender_value={sender_value!r} is not understood", "use 'corrupted' or 'mean'")
    to_logits = isinstance(receivers, str)
    if isinstance(receivers, str) and receivers != "logits":
        raise InputError(f"receivers={receivers!r} is not understood", "use 'logits' or a list of HeadId")
    recv: list[HeadId] = [] if isinstance(receivers, str) else [HeadId(int(h.layer), int(h.head)) for h in receivers]
    for h in recv:
        g.check_head(h.layer, h.head)
    if not to_logits and not recv:
        raise InputError("no receiver heads given", "pass receivers='logits' or at least one HeadId")
    inputs = _parse_inputs(receiver_input)

    corr = reference_z(loaded, corrupted_ids, corrupted_mask)
    sites = {Site.Z, Site.MLP_OUT} if freeze_mlps else {Site.Z}
    clean = run_capture(loaded, CaptureSpec(sites=frozenset(sites), keep_logits=False), clean_ids, clean_mask)
    # capturing MLP_OUT above already failed clearly on a family that exposes no MLP module
    mlps = {m: mlp for m in range(g.n_layers) if (mlp := loaded.adapter.mlp(m)) is not None} if freeze_mlps else {}
    sender_z = {
        layer: (z[None] if sender_value == "corrupted" else z.mean(0)[None, None])
        for layer, z in corr.z.items()
    }
    cache = PrefixCache(loaded, clean_ids, clean_mask)
    baseline = metric(cache.logits).cpu()
    reference = metric(run_with_interventions(loaded, corrupted_ids, corrupted_mask)).cpu()
    b = cache.batch
    last = g.n_layers if to_logits else max(h.layer for h in recv)

    variants = [v for v in head_variants(loaded, senders) if v.layer < last]
    out = torch.full((g.n_layers, g.n_heads, b), float("nan"))
    by_layer: dict[int, list[Variant]] = {}
    for v in variants:
        by_layer.setdefault(v.layer, []).append(v)
    per_chunk = max(1, max_rows // b)
    for layer, group in sorted(by_layer.items()):
        for start in range(0, len(group), per_chunk):
            chunk = group[start:start + per_chunk]
            k = len(chunk)
            smask = torch.zeros(k, 1, 1, g.n_heads, dtype=torch.bool)
            for j, v in enumerate(chunk):
                smask[j, 0, 0, v.head] = True
            masks: dict[int, torch.Tensor] = {layer: smask}
            values: dict[int, torch.Tensor] = {layer: sender_z[layer]}
            for m in range(layer + 1, last if not to_logits else g.n_layers):
                masks[m] = torch.ones(k, 1, 1, 1, dtype=torch.bool)
                values[m] = clean.z[m][None]
            freeze = [HookSpec(mlps[m], "forward", _mlp_freeze_hook(k, clean.mlp_out[m]))
                      for m in range(layer, g.n_layers if to_logits else last)] if freeze_mlps else []
            iv = RowwiseReplace(masks=masks, values=values)
            if to_logits:
                logits = cache.run_from(layer, k, interventions=[iv], positions=metric.end_pos, extra_hooks=freeze)
            else:
                logits = _via_receivers(loaded, cache, layer, k, iv, freeze, recv, inputs, metric, last)
            res = metric.from_end_logits(logits).view(k, b).cpu()
            for j, v in enumerate(chunk):
                out[v.layer, v.head] = res[j]
    return HeadEffects(method="path_patching", metric=metric.kind, values=out, baseline=baseline, reference=reference)


def _via_receivers(
    loaded: LoadedModel,
    cache: PrefixCache,
    layer: int,
    k: int,
    iv: RowwiseReplace,
    freeze: Sequence[HookSpec],
    recv: Sequence[HeadId],
    inputs: tuple[str, ...],
    metric: AnswerMetric,
    last: int,
) -> torch.Tensor:
    """Steps C (capture receivers' q/k/v under the sender patch) and D (patch only those)."""
    g = loaded.geometry
    targets = [h for h in recv if h.layer > layer]
    recv_layers = sorted({h.layer for h in targets})
    site_of = {"q": Site.Q, "k": Site.K, "v": Site.V}
    spec = CaptureSpec(sites=frozenset(site_of[s] for s in inputs), layers=tuple(recv_layers), keep_logits=False)
    ids = cache.input_ids.repeat(k, 1)
    with capturing(loaded, spec, ids, cache.attention_mask.repeat(k, 1)) as box:
        cache.run_from(layer, k, interventions=[iv], stop=last + 1, extra_hooks=freeze)
    rec = box["record"]
    specs: list[HookSpec] = []
    for m in recv_layers:
        points = loaded.adapter.qkv_hook_points(m)
        heads_m = [h.head for h in targets if h.layer == m]
        for s in inputs:
            site = site_of[s]
            module, split = points[site]
            if site == Site.Q:
                n, idx = g.n_heads, heads_m
            else:
                n, idx = g.n_kv_heads, sorted({g.kv_head_of(h) for h in heads_m})
            mask = torch.zeros(1, 1, n, 1, dtype=torch.bool)
            mask[0, 0, idx] = True
            captured: Mapping[int, torch.Tensor] = rec.site(site)
            specs.append(HookSpec(module, "forward", _qkv_replace_hook(split, mask, captured[m])))
    start = recv_layers[0]
    return cache.run_from(start, k, positions=metric.end_pos, extra_hooks=specs)


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, kw_only=True)
class PathPatchingConfig(MethodConfig):
    """``receivers``: ``logits`` or receiver heads like ``L1H2,L1H3``; ``receiver_input``: which of
    their q, k, v are patched. Sweeps run at most 256 rows per forward (``max_rows`` caps it lower)."""

    receivers: str = "logits"
    receiver_input: str = "qkv"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.receiver_heads()  # fail on a bad head list before the model loads
        _parse_inputs(self.receiver_input)

    def receiver_heads(self) -> str | list[HeadId]:
        """``"logits"`` or the parsed receiver heads."""
        return "logits" if self.receivers == "logits" else HeadId.parse_list(self.receivers)


class PathPatching(CausalMethod[PathPatchingConfig]):
    """Sender -> receivers (or logits) along direct paths, for every sender head."""

    name = "path_patching"
    run_kind = "patching"
    config_cls = PathPatchingConfig

    def needs_corrupted(self, config: PathPatchingConfig) -> bool:
        return True

    def run(self, lm: LoadedModel, config: PathPatchingConfig, inputs: CausalInputs) -> HeadEffects:
        corrupted_ids, corrupted_mask = inputs.corrupted(self.name)
        return path_patching(lm, inputs.clean_ids, inputs.clean_mask, corrupted_ids, corrupted_mask, inputs.metric,
                             receivers=config.receiver_heads(), receiver_input=config.receiver_input,
                             max_rows=min(config.max_rows, 256))


register_method(PathPatching())
