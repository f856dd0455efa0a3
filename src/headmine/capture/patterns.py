"""Attention patterns without eager attention: the rows a capture asks for, recomputed from q and k.

The forward keeps its fast kernel (SDPA, flash...), which returns no weights. A forward hook on each
requested layer's attention module reads the module's inputs, asks the adapter for q and k exactly as
the kernel received them (after q/k norms and RoPE: ``ModelAdapter.attention_qk``) and for the layer's
scoring rule (scaling, causal or bidirectional, sliding window, logit soft-cap:
``ModelAdapter.attention_scoring``), and computes ``softmax(q k^T * scaling + mask)`` for the requested
heads and query rows only, in blocks of query rows: the working memory is one block,
``batch x heads x q_block x k_len`` floats, and the result holds only the rows asked for. A query head
reads the KV head HF's ``repeat_kv`` gives it (consecutive query heads share one).

The mask is the one the layer was given when it is a 4-D mask (boolean for SDPA, additive for eager:
padding, causality and windows exactly as the model built them); when the model passed none (SDPA's
``is_causal`` shortcut) or a 2-D padding mask (flash attention), it is built from the scoring rule and
the padding mask. Logits and the softmax are computed in fp32 on q's device; the pattern comes back in
q's dtype, as the eager kernel returns it.
"""

from __future__ import annotations

import torch

from headmine.models.base import AttentionScoring

BLOCK_ELEMENTS = 1 << 24
"""Logits per query block when ``q_block`` is not given (16M floats, 64 MiB in fp32)."""


def query_block_size(batch: int, n_heads: int, k_len: int, q_block: int | None = None) -> int:
    """Rows per block: ``q_block`` if given, else as many as keep one block's logits at ``BLOCK_ELEMENTS``."""
    if q_block is not None:
        return max(1, int(q_block))
    return max(1, BLOCK_ELEMENTS // max(1, batch * n_heads * k_len))


def query_positions_per_row(query_index: torch.Tensor | None, batch: int, k_len: int, device: torch.device) -> torch.Tensor:
    """LongTensor [batch, n_q] of the query positions to compute (all positions when ``query_index`` is None)."""
    if query_index is None:
        return torch.arange(k_len, device=device).expand(batch, k_len)
    qi = query_index.to(device).long()
    return qi.expand(batch, -1) if qi.dim() == 1 else qi


def _rows(t: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    """``t`` [batch, n, pos, ...] -> [batch, n, n_q, ...] at the per-row positions ``qpos`` [batch, n_q]."""
    rows = torch.arange(t.shape[0], device=t.device)[:, None]
    return t[rows, :, qpos].transpose(1, 2)  # advanced indices first: [batch, n_q, n, ...]


def _mask_rows(
    scoring: AttentionScoring,
    qpos: torch.Tensor,
    k_len: int,
    layer_mask: torch.Tensor | None,
    key_mask: torch.Tensor | None,
    heads: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The additive mask rows [batch, 1 or heads, n_q, k_len] (fp32) for query positions ``qpos``."""
    if layer_mask is not None and layer_mask.dim() == 4:
        m = layer_mask[..., :k_len].expand(qpos.shape[0], -1, -1, -1)
        m = _rows(m, qpos)
        if m.shape[1] > 1:  # a per-head mask
            m = m.index_select(1, heads.to(m.device))
        if m.dtype == torch.bool:
            return torch.zeros((), dtype=torch.float32, device=m.device).masked_fill(~m, torch.finfo(dtype).min)
        return m.to(torch.float32)
    if layer_mask is not None and layer_mask.dim() == 2:
        key_mask = layer_mask
    kpos = torch.arange(k_len, device=qpos.device)
    allowed = torch.ones(qpos.shape[0], qpos.shape[1], k_len, dtype=torch.bool, device=qpos.device)
    if scoring.causal:
        allowed &= kpos <= qpos[..., None]
    if scoring.window is not None:
        allowed &= kpos > qpos[..., None] - scoring.window
    if key_mask is not None:
        allowed &= key_mask[:, None, :k_len].to(device=qpos.device, dtype=torch.bool)
    if bool(allowed.all()):
        return None
    zero = torch.zeros((), dtype=torch.float32, device=qpos.device)
    return zero.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def recompute_pattern(
    q: torch.Tensor,
    k: torch.Tensor,
    scoring: AttentionScoring,
    *,
    heads: torch.Tensor,
    query_index: torch.Tensor | None = None,
    layer_mask: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    q_block: int | None = None,
) -> torch.Tensor:
    """Attention pattern rows ``[batch, len(heads), n_q, k_len]`` of query ``heads`` from post-RoPE
    ``q`` [batch, n_heads, pos, d_head] and ``k`` [batch, n_kv_heads, pos, d_head].

    ``query_index``: None (every row), [n_q] (the same rows for every sequence) or [batch, n_q]; as in
    ``CaptureRecord.query_index``. ``layer_mask``: the mask the layer received (4-D boolean or additive,
    2-D padding, or None); ``key_mask`` [batch, pos]: the padding mask, used when the layer's mask is not
    4-D. ``q_block``: query rows per block (None: ``query_block_size``).
    """
    b, n_heads, _, _ = q.shape
    n_kv, k_len = k.shape[1], k.shape[2]
    heads = heads.to(q.device).long()
    kv = torch.div(heads, n_heads // n_kv, rounding_mode="floor")
    qh = q.index_select(1, heads)  # [b, hs, pos, d]
    kh = k.index_select(1, kv).to(torch.float32).transpose(-1, -2)  # [b, hs, d, k]
    qpos = query_positions_per_row(query_index, b, k_len, q.device)
    n_q = qpos.shape[1]
    block = query_block_size(b, len(heads), k_len, q_block)
    keep_graph = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    out = None if keep_graph else torch.empty(b, len(heads), n_q, k_len, dtype=q.dtype, device=q.device)
    parts = []
    for start in range(0, n_q, block):
        pos = qpos[:, start : start + block]
        logits = torch.matmul(_rows(qh, pos).to(torch.float32), kh) * scoring.scaling  # [b, hs, B, k]
        if scoring.softcap is not None:
            logits = torch.tanh(logits / scoring.softcap) * scoring.softcap
        mask = _mask_rows(scoring, pos, k_len, layer_mask, key_mask, heads, q.dtype)
        if mask is not None:
            logits = logits + mask
        rows = torch.softmax(logits, dim=-1).to(q.dtype)
        if out is None:
            parts.append(rows)
        else:
            out[:, :, start : start + block] = rows
    if out is not None:
        return out
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
