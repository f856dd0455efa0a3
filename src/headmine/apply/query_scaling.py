"""Undifferentiated Attention (Zhou et al., ICLR 2025, spec 3.1): a head's *query* multiplied by ``eps``.

With its query near zero a head's attention collapses to the causal average, so ``z_h[t] ->
mean_{s<=t} v[s]``: the head stops choosing what to read. Query scaling indexes *query* heads, so a
GQA/MQA head is ablated alone. In a model with a query norm (Gemma 3, Qwen 3) the scale is applied to
the norm's output, not to ``q_proj``'s, which the norm would undo. Families with a fused qkv projection
and no query norm are refused. Several head sets can share one forward pass, one set per block of rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from headmine.capture.hooks import HookSpec, hooks
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site


def _head_axis(t: torch.Tensor, n_heads: int, d_head: int) -> int:
    """Which axis of a per-head query tensor ([b, n, pos, d] or [b, pos, n, d]) holds the heads: the one
    of size ``n_heads`` whose stride is ``d_head`` (the heads are contiguous blocks of q_proj's output)."""
    if t.dim() != 4 or t.shape[-1] != d_head:
        raise InputError(f"cannot find the head axis of a query tensor of shape {tuple(t.shape)}", "report this model")
    axes = [a for a in (1, 2) if t.shape[a] == n_heads and t.stride(a) == d_head]
    if len(axes) != 1:
        axes = [a for a in (1, 2) if t.shape[a] == n_heads]
    if len(axes) != 1:
        raise InputError(f"the head axis of a query tensor of shape {tuple(t.shape)} is ambiguous", "report this model")
    return axes[0]


def _q_hook(lm: Any, layer: int, factors: torch.Tensor) -> HookSpec:
    """A forward hook multiplying layer ``layer``'s queries by ``factors`` [rows or 1, n_heads] per head."""
    g = lm.geometry
    attn = lm.adapter.attention(layer)
    q_norm = getattr(attn, "q_norm", None)
    if q_norm is not None:
        def after_norm(module: Any, args: Any, kwargs: Any, out: torch.Tensor) -> torch.Tensor:
            inp = args[0] if args else next(iter(kwargs.values()))
            axis = _head_axis(inp, g.n_heads, g.d_head)
            f = factors.to(out.device, out.dtype)
            if f.shape[0] not in (1, out.shape[0]):
                f = f[:1]
            shape = [f.shape[0], 1, 1, 1]
            shape[axis] = g.n_heads
            return out * f.view(shape)
        return HookSpec(q_norm, "forward", after_norm)
    points = lm.adapter.qkv_hook_points(layer)
    module = points[Site.Q][0]
    if module is points[Site.K][0]:
        raise InputError(f"{lm.name} has a fused qkv projection: query scaling is not supported for it",
                         "use a family with a separate query projection (Llama, Gemma, Qwen, Mistral...)")

    def on_proj(module: Any, args: Any, kwargs: Any, out: torch.Tensor) -> torch.Tensor:
        f = factors.to(out.device, out.dtype)
        if f.shape[0] not in (1, out.shape[0]):
            f = f[:1]
        z = out.unflatten(-1, (g.n_heads, g.d_head))
        return (z * f.view(f.shape[0], *([1] * (z.dim() - 3)), g.n_heads, 1)).flatten(-2)
    return HookSpec(module, "forward", on_proj)


@contextmanager
def scaled_queries(lm: Any, head_sets: Sequence[Sequence[HeadId]], eps: float, rows_per_set: int = 1) -> Iterator[None]:
    """Scale the queries of ``head_sets[i]`` by ``eps`` in rows ``[i*rows_per_set, (i+1)*rows_per_set)`` of
    the batch (one set, ``rows_per_set=1``: every row, as during generation)."""
    g = lm.geometry
    for hs in head_sets:
        for h in hs:
            g.check_head(h.layer, h.head)
    layers = sorted({h.layer for hs in head_sets for h in hs})
    specs = []
    for layer in layers:
        f = torch.ones(len(head_sets), g.n_heads)
        for i, hs in enumerate(head_sets):
            for h in hs:
                if h.layer == layer:
                    f[i, h.head] = eps
        f = f.repeat_interleave(rows_per_set, 0) if len(head_sets) > 1 else f
        specs.append(_q_hook(lm, layer, f))
    with hooks(specs):
        yield


def undifferentiated(lm: Any, heads: Sequence[HeadId], eps: float = 1e-5) -> AbstractContextManager[None]:
    """Undifferentiated Attention on ``heads`` in every forward pass inside the block."""
    return scaled_queries(lm, [tuple(heads)], eps)
