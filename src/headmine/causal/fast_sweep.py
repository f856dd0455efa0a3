"""Exact per-head sweeps without L x H full forward passes.

An intervention on a head of layer ``l`` leaves layers ``< l`` untouched. ``PrefixCache`` runs the
clean batch once, keeping each decoder layer's input residual and the exact call arguments the model
passed to it (attention mask, rotary position embeddings, ...). ``PrefixCache.run_from(l, ...)``
then calls layers ``l..L-1`` directly, followed by the adapter's readout (final norm, unembedding,
soft-cap) *at the prediction positions only*. Many variants (one per head, per head and position, ...) are stacked
along the batch axis (variant-major: row ``v * B + b``) and run together.

Variants are applied with ``RowwiseReplace``, an ``Intervention`` of the one engine
(``headmine.causal.engine.intervening``): per layer, a boolean site mask broadcastable to
``[k, B, T, H]`` and replacement values broadcastable to ``[k, B, T, H, d_head]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.engine import intervening
from headmine.causal.interventions import Intervention
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError
from headmine.models.loading import LoadedModel


# --------------------------------------------------------------------------- the intervention
@dataclass(frozen=True, kw_only=True)
class RowwiseReplace(Intervention):
    """Replace z where ``masks[layer]`` is set, with ``values[layer]``; rows are ``k`` stacked variants.

    ``masks[layer]``: bool, broadcastable to [k, B, T, H] (e.g. [k, 1, 1, H] one head per variant).
    ``values[layer]``: broadcastable to [k, B, T, H, d_head] (0-dim zero, a [1, B, T, H, d] source, a
    [H, d] mean, or a full [k, B, T, H, d] tensor). ``k`` is the leading size of the mask.
    """

    masks: Mapping[int, torch.Tensor] = field(default_factory=dict)
    values: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def layers(self) -> set[int]:
        return set(self.masks)

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        mask = self.masks[layer].to(z.device)
        k = mask.shape[0]
        r, t, h, d = z.shape
        if r % k:
            raise InputError(f"{r} rows cannot hold {k} stacked variants")
        z5 = z.view(k, r // k, t, h, d)
        val = self.values[layer].to(device=z.device, dtype=z.dtype)
        if val.dim() == 5 and val.shape[2] not in (1, t):
            raise InputError(f"replacement has {val.shape[2]} positions but the run has {t}", "use equal-length prompts")
        return torch.where(mask[..., None], val, z5).view(r, t, h, d)


# --------------------------------------------------------------------------- the prefix cache
def _expand(obj: Any, b: int, k: int) -> Any:
    """Stack ``k`` copies of every batch-shaped tensor (dim >= 2, leading size ``b``) in ``obj``."""
    if isinstance(obj, torch.Tensor):
        if k > 1 and obj.dim() >= 2 and obj.shape[0] == b:
            return obj.repeat(k, *([1] * (obj.dim() - 1)))
        return obj
    if isinstance(obj, tuple):
        return tuple(_expand(o, b, k) for o in obj)
    if isinstance(obj, list):
        return [_expand(o, b, k) for o in obj]
    if isinstance(obj, dict):
        return {key: _expand(o, b, k) for key, o in obj.items()}
    return obj


def _no_cache(obj: Any) -> Any:
    """Drop KV caches from captured layer arguments (a cache would grow on every direct call)."""
    name = type(obj).__name__
    return None if name.endswith("Cache") else obj


class PrefixCache:
    """One clean forward pass, remembered so any suffix of the layer stack can be rerun exactly."""

    def __init__(self, loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        g = loaded.geometry
        if loaded.adapter.unembedding() is None:
            raise InputError(f"{loaded.name} has no unembedding; this method needs a causal LM")
        loaded.check_length(input_ids.shape[-1])
        self.loaded = loaded
        self.input_ids = input_ids.to(loaded.device)
        self.attention_mask = (torch.ones_like(self.input_ids) if attention_mask is None else attention_mask.to(loaded.device))
        self.batch = int(self.input_ids.shape[0])
        self.resid: dict[int, torch.Tensor] = {}  # layer -> its input hidden states [B, T, D]
        self.call_args: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}  # layer -> its other arguments

        def grab(i: int) -> Callable:
            def fn(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                self.resid[i] = hidden.detach()
                rest = tuple(_no_cache(a) for a in args[1:])
                kw = {key: _no_cache(v) for key, v in kwargs.items() if key != "hidden_states"}
                if "use_cache" in kw:
                    kw["use_cache"] = False
                self.call_args[i] = (rest, kw)

            return fn

        specs = [HookSpec(loaded.adapter.layer(i), "pre", grab(i)) for i in range(g.n_layers)]
        with torch.no_grad(), hooks(specs):
            out = loaded.model(input_ids=self.input_ids, attention_mask=self.attention_mask, use_cache=False)
        self.logits = out.logits

    def layer_call(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        k = hidden.shape[0] // self.batch
        rest, kw = self.call_args[i]
        out = self.loaded.adapter.layer(i)(hidden, *_expand(rest, self.batch, k), **_expand(kw, self.batch, k))
        return out[0] if isinstance(out, tuple) else out

    def unembed(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding (+ soft-cap) of ``hidden`` [R, T, D] at per-row ``positions`` [R] -> [R, V]."""
        x = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]
        return self.loaded.adapter.readout(x[:, None])[:, 0]

    def run_from(
        self,
        layer: int,
        k: int = 1,
        *,
        interventions: Sequence[Intervention] = (),
        hidden: torch.Tensor | None = None,
        stop: int | None = None,
        positions: torch.Tensor | None = None,
        extra_hooks: Sequence[HookSpec] = (),
    ) -> torch.Tensor:
        """Run layers ``layer..stop-1`` on ``k`` stacked copies of the cached input of ``layer``.

        Returns logits [k*B, V] at ``positions`` (per prompt, tiled; default: last real token), or,
        when ``stop`` is given, the residual [k*B, T, D] entering layer ``stop``.
        """
        g = self.loaded.geometry
        if hidden is None:
            hidden = self.resid[layer].repeat(k, 1, 1)
        end = g.n_layers if stop is None else stop
        with torch.no_grad(), intervening(self.loaded, interventions), hooks(list(extra_hooks)):
            for i in range(layer, end):
                hidden = self.layer_call(i, hidden)
        if stop is not None:
            return hidden
        if positions is None:
            positions = self.attention_mask.sum(1) - 1
        with torch.no_grad():
            return self.unembed(hidden, positions.repeat(k))


# --------------------------------------------------------------------------- generic sweep
@dataclass(frozen=True)
class Variant:
    """One sweep variant: a head (or ``head=-1`` for every head of the layer) at ``positions``."""

    layer: int
    head: int
    position: int | None = None  # None = every position


def sweep_variants(
    cache: PrefixCache,
    metric: AnswerMetric,
    variants: Sequence[Variant],
    value_for: Callable[[int], torch.Tensor],
    *,
    max_rows: int = 512,
    extra: Callable[[int, int], Mapping[int, tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> torch.Tensor:
    """Metric [n_variants, B] with each variant's z replaced by ``value_for(layer)``.

    ``value_for(layer)`` returns values broadcastable to [k, B, T, H, d_head] (e.g. [1, B, T, H, d]).
    ``extra(layer, k)`` may add further (mask, values) pairs for later layers (path patching freezes).
    Variants are grouped by layer and run ``max_rows // B`` at a time from that layer's cached input.
    """
    g = cache.loaded.geometry
    b, t = cache.batch, cache.input_ids.shape[1]
    out = torch.empty(len(variants), b)
    by_layer: dict[int, list[int]] = {}
    for i, v in enumerate(variants):
        g.check_layer(v.layer)
        if v.head >= 0:
            g.check_head(v.layer, v.head)
        if v.position is not None and not 0 <= v.position < t:
            raise InputError(f"position {v.position} outside the {t}-token prompts")
        by_layer.setdefault(v.layer, []).append(i)
    per_chunk = max(1, max_rows // b)
    for layer, idx in sorted(by_layer.items()):
        value = value_for(layer)
        for start in range(0, len(idx), per_chunk):
            chunk = idx[start:start + per_chunk]
            k = len(chunk)
            mask = torch.zeros(k, 1, t, g.n_heads, dtype=torch.bool)
            for j, vi in enumerate(chunk):
                v = variants[vi]
                heads = slice(None) if v.head < 0 else v.head
                if v.position is None:
                    mask[j, 0, :, heads] = True
                else:
                    mask[j, 0, v.position, heads] = True
            masks = {layer: mask}
            values = {layer: value}
            if extra is not None:
                for lay, (m, val) in extra(layer, k).items():
                    masks[lay], values[lay] = m, val
            logits = cache.run_from(layer, k, interventions=[RowwiseReplace(masks=masks, values=values)],
                                    positions=metric.end_pos)
            out[chunk] = metric.from_end_logits(logits).view(k, b).cpu()
    return out


def head_variants(loaded: LoadedModel, heads: Sequence[Any] | None = None, *, per_position: int | None = None) -> list[Variant]:
    """All heads (or ``heads``), optionally crossed with positions ``0..per_position-1``."""
    g = loaded.geometry
    pairs = [(h.layer, h.head) for h in (heads if heads is not None else g.heads())]
    if per_position is None:
        return [Variant(layer, head) for layer, head in pairs]
    return [Variant(layer, head, p) for layer, head in pairs for p in range(per_position)]
