"""Capture requests and the typed records they produce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from headmine.core.errors import CaptureError
from headmine.core.ids import HeadId, Site

QueryPositions = None | str | tuple[int, ...] | torch.Tensor
PATTERN_MODES = ("auto", "recompute", "eager")


@dataclass(frozen=True, kw_only=True)
class CaptureSpec:
    """Which sites to record, for which layers, heads and query positions.

    Attributes:
        sites: the per-head quantities to record (see ``Site``).
        layers: layers to record (None = all). Resid index i means "input of layer i"; index
            n_layers is the output of the last layer (before the final norm).
        heads: restrict head sites to these heads (None = every head of the selected layers).
        query_positions: None (all), "last" (last real token per row), a tuple of positions, or a
            LongTensor [batch] with one position per row. Applies to pattern rows and to q/z/result/resid.
        detach: store detached tensors (False keeps the graph, for gradient methods).
        on_site: if given, called as ``on_site(site, layer, tensor)`` as each tensor is produced and
            nothing is stored: an on-the-fly reduction that never holds all layers at once.
        keep_logits: keep the model's logits in the record.
        pattern_mode: how patterns are obtained. "auto": recomputed from q and k when the model runs a
            fast kernel (SDPA...) and its adapter supports it, the eager weights when the model runs
            eager, else the model is switched to eager for the capture; "recompute": always recomputed
            (CaptureError if the family cannot); "eager": the eager kernel's weights (switching to it).
        query_block: query rows per block of the recompute (None: sized to ~64 MiB of logits).
    """

    sites: frozenset[Site]
    layers: tuple[int, ...] | None = None
    heads: tuple[HeadId, ...] | None = None
    query_positions: QueryPositions = None
    detach: bool = True
    on_site: Callable[[Site, int, torch.Tensor], None] | None = field(default=None, compare=False)
    keep_logits: bool = True
    pattern_mode: str = "auto"
    query_block: int | None = None

    def __post_init__(self) -> None:
        sites = frozenset(Site(s) for s in self.sites)
        object.__setattr__(self, "sites", sites)
        if not sites:
            raise CaptureError("a CaptureSpec needs at least one site", f"choose from {[s.value for s in Site]}")
        if isinstance(self.query_positions, str) and self.query_positions != "last":
            raise CaptureError(f"query_positions={self.query_positions!r} is not understood", 'use None, "last", a tuple or a tensor')
        if self.pattern_mode not in PATTERN_MODES:
            raise CaptureError(f"pattern_mode={self.pattern_mode!r} is not understood", f"use one of {', '.join(PATTERN_MODES)}")
        if self.query_block is not None and self.query_block < 1:
            raise CaptureError(f"query_block={self.query_block} must be at least 1", "use None for an automatic size")


@dataclass(frozen=True)
class CaptureRecord:
    """What one forward pass recorded. Per-layer dicts are keyed by layer index.

    pattern[l]: [batch, n_sel_heads, n_q, k_pos]; q/z[l]: [batch, n_q, n_sel_heads, d_head];
    k/v[l]: [batch, pos, n_kv_heads, d_head]; result[l]: [batch, n_q, n_sel_heads, d_model];
    resid[i]/attn_out[l]/mlp_out[l]: [batch, n_q, d_model]. ``heads[l]`` lists the query heads
    (in order) that the head axis of layer l holds; ``query_index`` the positions kept (None = all).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    heads: dict[int, list[int]]
    pattern: dict[int, torch.Tensor] = field(default_factory=dict)
    q: dict[int, torch.Tensor] = field(default_factory=dict)
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)
    z: dict[int, torch.Tensor] = field(default_factory=dict)
    result: dict[int, torch.Tensor] = field(default_factory=dict)
    resid: dict[int, torch.Tensor] = field(default_factory=dict)
    attn_out: dict[int, torch.Tensor] = field(default_factory=dict)
    mlp_out: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    query_index: torch.Tensor | None = None
    pattern_source: str = ""  # "eager", "eager (switched from sdpa for this capture)" or "recomputed from q,k (sdpa forward)"
    meta: dict[str, Any] = field(default_factory=dict)

    def site(self, site: Site) -> dict[int, torch.Tensor]:
        return getattr(self, Site(site).value)

    def head_tensor(self, site: Site, head: HeadId) -> torch.Tensor:
        """One head's slice of a head site (pattern: [batch, n_q, k_pos]; z/q/result: [batch, n_q, ...])."""
        per_layer = self.site(site)
        if head.layer not in per_layer:
            raise CaptureError(f"{site.value} was not captured for layer {head.layer}", "add the layer to the CaptureSpec")
        try:
            idx = self.heads[head.layer].index(head.head)
        except ValueError:
            raise CaptureError(f"head {head} was not captured", "add it to CaptureSpec.heads") from None
        t = per_layer[head.layer]
        return t[:, idx] if site == Site.PATTERN else t[:, :, idx]
