"""Run a model and record exactly the sites a ``CaptureSpec`` asks for.

Patterns: a model running a fast kernel (SDPA...) keeps it, and the requested pattern rows are
recomputed from q and k after each attention module runs (``headmine.capture.patterns``), when its
adapter supports it (``ModelAdapter.recomputes_patterns``). A model running eager attention returns
its weights (``(attn_output, attn_weights)``), which are kept as they are. Otherwise (a family without
the recompute, or ``CaptureSpec(pattern_mode="eager")``) the model is switched to eager only while
patterns are captured. The record says which (``pattern_source``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import torch

from headmine.capture.hooks import HookSpec, attention_implementation, hooks
from headmine.capture.patterns import recompute_pattern
from headmine.capture.records import CaptureRecord, CaptureSpec
from headmine.core.errors import CaptureError
from headmine.core.ids import Site
from headmine.models.base import attention_implementation_of
from headmine.models.loading import LoadedModel

T = TypeVar("T")


def pattern_plan(loaded: LoadedModel, spec: CaptureSpec) -> tuple[str, str]:
    """How ``spec``'s patterns are obtained on ``loaded``: ("recompute" | "eager" | "switch", pattern_source)."""
    implementation = attention_implementation_of(loaded.model)
    can = loaded.adapter.recomputes_patterns
    if spec.pattern_mode == "recompute" and not can:
        raise CaptureError(
            f"{type(loaded.adapter).__name__} cannot recompute patterns from q and k (recomputes_patterns is False)",
            'use CaptureSpec(pattern_mode="auto") or "eager", or give the adapter attention_qk/attention_scoring '
            "and check it in the conformance suite",
        )
    if spec.pattern_mode == "recompute" or (spec.pattern_mode == "auto" and implementation != "eager" and can):
        return "recompute", f"recomputed from q,k ({implementation} forward)"
    if implementation == "eager":
        return "eager", "eager"
    return "switch", f"eager (switched from {implementation} for this capture)"


class _Collector:
    """Builds hook functions for one capture and holds what they record."""

    def __init__(self, loaded: LoadedModel, spec: CaptureSpec, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 recompute: bool = False):
        self.loaded, self.spec, self.recompute, self.attention_mask = loaded, spec, recompute, attention_mask
        g = loaded.geometry
        default = g.n_layers + 1 if Site.RESID in spec.sites else g.n_layers  # resid also after the last layer
        layers = spec.layers if spec.layers is not None else tuple(range(default))
        for layer in layers:
            if Site.RESID not in spec.sites or layer != g.n_layers:
                g.check_layer(layer)
        self.layers = layers
        heads: dict[int, list[int]] = {}
        if spec.heads is None:
            heads = {layer: list(range(g.n_heads)) for layer in layers if layer < g.n_layers}
        else:
            for h in spec.heads:
                g.check_head(h.layer, h.head)
                heads.setdefault(h.layer, []).append(h.head)
            heads = {layer: sorted(set(hs)) for layer, hs in heads.items()}
            if spec.layers is None:
                self.layers = tuple(sorted(heads))
        self.heads = heads
        self.store: dict[Site, dict[int, torch.Tensor]] = {s: {} for s in Site}
        self.query_index = self._query_index(spec.query_positions, input_ids, attention_mask)

    @staticmethod
    def _query_index(qp: Any, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """None (all), or LongTensor [n_q] (same for all rows) or [batch, 1] (one per row)."""
        if qp is None:
            return None
        if isinstance(qp, str):  # "last"
            return (mask.sum(dim=1).long() - 1).view(-1, 1)
        if isinstance(qp, torch.Tensor):  # per row: [batch] or [batch, n_q]
            return qp.long().view(input_ids.shape[0], -1)
        t = input_ids.shape[1]
        pos = torch.tensor([p + t if p < 0 else p for p in qp], dtype=torch.long)
        if (pos < 0).any() or (pos >= t).any():
            raise CaptureError(f"query positions {list(qp)} fall outside a sequence of {t} tokens", "use positions in range")
        return pos

    def _select_q(self, t: torch.Tensor, pos_dim: int) -> torch.Tensor:
        qi = self.query_index
        if qi is None:
            return t
        qi = qi.to(t.device)
        if qi.dim() == 1:
            return t.index_select(pos_dim, qi)
        rows = torch.arange(t.shape[0], device=t.device)[:, None]
        return t.movedim(pos_dim, 1)[rows, qi].movedim(1, pos_dim)

    def _keep(self, site: Site, layer: int, tensor: torch.Tensor) -> None:
        if self.spec.detach:
            tensor = tensor.detach()
        if self.spec.on_site is not None:
            self.spec.on_site(site, layer, tensor)
        else:
            self.store[site][layer] = tensor

    def hook_specs(self) -> list[HookSpec]:
        a, g, sites = self.loaded.adapter, self.loaded.geometry, self.spec.sites
        out: list[HookSpec] = []
        for layer in self.layers:
            if layer >= g.n_layers:
                continue
            heads = self.heads.get(layer)
            if heads is None:
                continue
            head_idx = torch.tensor(heads)
            if Site.PATTERN in sites:
                hook = self._recompute_hook if self.recompute else self._pattern_hook
                out.append(HookSpec(a.attention(layer), "forward", hook(layer, head_idx)))
            if Site.Z in sites or Site.RESULT in sites:
                out.append(HookSpec(a.out_proj(layer), "pre", self._z_hook(layer, head_idx)))
            qkv_sites = sites & {Site.Q, Site.K, Site.V}
            if qkv_sites:
                for site, (module, split) in a.qkv_hook_points(layer).items():
                    if site in qkv_sites:
                        out.append(HookSpec(module, "forward", self._qkv_hook(site, layer, split, head_idx)))
            if Site.ATTN_OUT in sites:
                out.append(HookSpec(a.attention(layer), "forward", self._out_hook(Site.ATTN_OUT, layer)))
            if Site.MLP_OUT in sites:
                mlp = a.mlp(layer)
                if mlp is None:
                    raise CaptureError(f"{type(a).__name__} does not expose an MLP module", "capture resid instead")
                out.append(HookSpec(mlp, "forward", self._out_hook(Site.MLP_OUT, layer)))
        if Site.RESID in sites:
            for layer in self.layers:
                if layer < g.n_layers:
                    out.append(HookSpec(a.layer(layer), "pre", self._resid_pre_hook(layer)))
                else:
                    out.append(HookSpec(a.layer(g.n_layers - 1), "forward", self._out_hook(Site.RESID, layer)))
        return out

    def _pattern_hook(self, layer: int, head_idx: torch.Tensor) -> Callable[..., None]:
        all_heads = head_idx.tolist() == list(range(self.loaded.geometry.n_heads))  # no copy needed
        def fn(module, args, kwargs, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise CaptureError(
                    f"layer {layer} returned no attention weights (attention implementation is not eager)",
                    'load the model with attn_implementation="eager"',
                )
            w = weights if all_heads else weights.index_select(1, head_idx.to(weights.device))
            self._keep(Site.PATTERN, layer, self._select_q(w, 2))

        return fn

    def _recompute_hook(self, layer: int, head_idx: torch.Tensor) -> Callable[..., None]:
        """After the attention module ran: its pattern rows for ``head_idx`` recomputed from q and k."""
        adapter = self.loaded.adapter
        scoring = adapter.attention_scoring(layer)

        def fn(module, args, kwargs, output):
            with torch.no_grad() if self.spec.detach else torch.enable_grad():
                inputs = adapter.attention_inputs(layer, args, kwargs)
                q, k = adapter.attention_qk(layer, inputs)
                pattern = recompute_pattern(
                    q, k, scoring, heads=head_idx, query_index=self.query_index,
                    layer_mask=inputs.get("attention_mask"), key_mask=self.attention_mask, q_block=self.spec.query_block,
                )
            self._keep(Site.PATTERN, layer, pattern)

        return fn

    def _z_hook(self, layer: int, head_idx: torch.Tensor) -> Callable[..., None]:
        g, adapter, sites = self.loaded.geometry, self.loaded.adapter, self.spec.sites
        all_heads = head_idx.tolist() == list(range(g.n_heads))

        def fn(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            z = x.unflatten(-1, (g.n_heads, g.d_head))
            if not all_heads:
                z = z.index_select(2, head_idx.to(x.device))
            z = self._select_q(z, 1)
            if Site.Z in sites:
                self._keep(Site.Z, layer, z)
            if Site.RESULT in sites:
                w_o = adapter.W_O(layer).index_select(0, head_idx.to(x.device))
                self._keep(Site.RESULT, layer, torch.einsum("bqhd,hdm->bqhm", z, w_o.to(z.dtype)))

        return fn

    def _qkv_hook(self, site: Site, layer: int, split: Callable, head_idx: torch.Tensor) -> Callable[..., None]:
        def fn(module, args, kwargs, output):
            t = split(output)
            if site == Site.Q:
                t = self._select_q(t.index_select(2, head_idx.to(t.device)), 1)
            self._keep(site, layer, t)

        return fn

    def _out_hook(self, site: Site, layer: int) -> Callable[..., None]:
        def fn(module, args, kwargs, output):
            t = output[0] if isinstance(output, tuple) else output
            self._keep(site, layer, self._select_q(t, 1))

        return fn

    def _resid_pre_hook(self, layer: int) -> Callable[..., None]:
        def fn(module, args, kwargs):
            t = args[0] if args else kwargs["hidden_states"]
            self._keep(Site.RESID, layer, self._select_q(t, 1))

        return fn


@contextmanager
def capturing(
    loaded: LoadedModel, spec: CaptureSpec, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> Iterator[dict[str, Any]]:
    """Install exactly the hooks ``spec`` asks for around a forward pass you run yourself.

    Yields a dict; after the block it holds ``"record"`` (a ``CaptureRecord`` without logits).
    Hooks installed by an enclosing intervention context run first, so captures see intervened values.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mode, source = pattern_plan(loaded, spec) if Site.PATTERN in spec.sites else ("", "")
    collector = _Collector(loaded, spec, input_ids, attention_mask, recompute=mode == "recompute")
    box: dict[str, Any] = {}
    with ExitStack() as stack:
        if mode == "switch":
            stack.enter_context(attention_implementation(loaded.model, "eager"))
        stack.enter_context(hooks(collector.hook_specs()))
        yield box
    s = collector.store
    box["record"] = CaptureRecord(
        input_ids=input_ids, attention_mask=attention_mask, heads=collector.heads,
        pattern=s[Site.PATTERN], q=s[Site.Q], k=s[Site.K], v=s[Site.V], z=s[Site.Z], result=s[Site.RESULT],
        resid=s[Site.RESID], attn_out=s[Site.ATTN_OUT], mlp_out=s[Site.MLP_OUT],
        query_index=collector.query_index, pattern_source=source,
    )


def run_capture(
    loaded: LoadedModel, spec: CaptureSpec, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> CaptureRecord:
    """One forward pass of ``loaded`` recording ``spec``; returns the record with logits if asked."""
    loaded.check_length(input_ids.shape[-1])
    input_ids = input_ids.to(loaded.device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(loaded.device)
    grad = torch.enable_grad() if not spec.detach else torch.no_grad()
    with grad, capturing(loaded, spec, input_ids, attention_mask) as box:
        out = loaded.model(input_ids=input_ids, attention_mask=attention_mask)
    record: CaptureRecord = box["record"]
    if spec.keep_logits:
        logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
        object.__setattr__(record, "logits", logits if not spec.detach else logits.detach())
    return record


def stream_pattern_layers(
    loaded: LoadedModel,
    spec: CaptureSpec,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    on_layer: Callable[[int, CaptureRecord], None],
) -> None:
    """One forward pass; ``on_layer(layer, record)`` gets each layer's pattern as soon as it is computed,
    in a record holding that layer only (for the detectors, which score the layers a record holds), and
    nothing is kept: one layer's pattern rows are alive at a time, not all layers'."""
    if spec.sites != {Site.PATTERN}:
        raise CaptureError("stream_pattern_layers streams patterns only", "capture other sites with run_capture")
    loaded.check_length(input_ids.shape[-1])
    input_ids = input_ids.to(loaded.device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(loaded.device)
    layout = _Collector(loaded, spec, input_ids, attention_mask)
    source = pattern_plan(loaded, spec)[1]

    def emit(site: Site, layer: int, pattern: torch.Tensor) -> None:
        on_layer(layer, CaptureRecord(input_ids=input_ids, attention_mask=attention_mask, heads=layout.heads,
                                      pattern={layer: pattern}, query_index=layout.query_index, pattern_source=source))

    run_capture(loaded, replace(spec, on_site=emit, keep_logits=False), input_ids, attention_mask)


def capture_reduce(
    loaded: LoadedModel,
    spec: CaptureSpec,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    reduce: Callable[[CaptureRecord], T],
) -> Iterator[T]:
    """Capture each batch and yield ``reduce(record)``; a record is dropped before the next batch runs."""
    for input_ids, attention_mask in batches:
        record = run_capture(loaded, spec, input_ids, attention_mask)
        yield reduce(record)
        del record
