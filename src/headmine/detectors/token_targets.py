"""Shared scores of the token-class detectors: attention mass and max-attention hits on target keys.

The token-class heads of the survey (delimiter, block, apostrophe, interrogation, subword merge, rare
words, sentiment summarizer, content gatherer) all say "from these query rows, the head attends to
these keys". Two ways of counting that, both per sequence and per head:

- ``target_mass``: the attention on the target keys over the attention on the *allowed* keys,
  averaged over the eligible query rows (rows with at least one target). Allowed keys default to every
  real key but the first (the attention sink), so the score is renormalised and the batch carries the
  head's ``non_first_mass``, as ``template_score`` does; a detector may also drop local keys (the query
  itself, its previous token) from both sides when a positional head would otherwise score.
- ``argmax_hits``: the fraction of eligible rows whose most-attended allowed key is a target
  (Voita et al. 2019 and Clark et al. 2019 count a head's *maximum* attention).

Both read captured query rows only (``query_positions``), so query subsets and padding are respected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    empty_scores,
    n_layers_heads,
    non_first_mass,
    query_positions,
    require_site,
)


def causal_keys(mask: torch.Tensor, *, drop_first: bool = True, drop_current: bool = False,
                drop_previous: bool = False) -> torch.Tensor:
    """Bool [b, T, T]: key j is a real token at or before query i, minus the first key / the query itself /
    its previous token as asked."""
    m = mask.cpu().bool()
    t = m.shape[1]
    keys = torch.ones(t, t, dtype=torch.bool).tril()[None] & m[:, None, :] & m[:, :, None]
    eye = torch.eye(t, dtype=torch.bool)
    if drop_first:
        keys[:, :, 0] = False
    if drop_current:
        keys &= ~eye
    if drop_previous and t > 1:
        keys &= ~torch.diag(torch.ones(t - 1, dtype=torch.bool), -1)
    return keys


def _rows(record: CaptureRecord, a: torch.Tensor, target: torch.Tensor, keys: torch.Tensor,
          rows_ok: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target and key masks of the captured query rows, the eligible rows and their positions."""
    b = target.shape[0]
    qpos = query_positions(record, a.shape[2])
    r = torch.arange(b)[:, None]
    p_q = (target & keys)[r, qpos]  # [b, q, k]
    k_q = keys[r, qpos]
    eligible = p_q.any(-1) & record.attention_mask.cpu().bool()[r, qpos]
    if rows_ok is not None:
        eligible &= rows_ok.cpu().bool()[r, qpos]
    return p_q, k_q, eligible, qpos


def target_mass(record: CaptureRecord, meta: Mapping[str, Any], target: torch.Tensor, *, detector: str,
                keys: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> BatchScores:
    """Per sequence and head: mean over eligible query rows of A[i, targets] / A[i, allowed keys].

    ``target`` Bool [b, T, T] (query i, key j); ``keys`` Bool [b, T, T], the allowed keys (default
    ``causal_keys(mask)``: every real key but the first); ``rows`` Bool [b, T], the query rows that may
    count (default all). A row is eligible when it is real, allowed by ``rows`` and has a target among
    its allowed keys. NaN where a sequence has no eligible row or no attention on allowed keys.
    ``non_first_mass`` is the mean attention on keys other than the first over the same rows."""
    patterns = require_site(record, Site.PATTERN, detector)
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    keys = causal_keys(mask) if keys is None else keys.cpu().bool()
    target = target.cpu().bool()
    b = mask.shape[0]
    out = empty_scores(b, n_layers, n_heads)
    mass = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)  # [b, h, q, k]
        p_q, k_q, eligible, qpos = _rows(record, a, target, keys, rows)
        w = a * k_q[:, None].to(a.dtype)
        num = (w * p_q[:, None].to(a.dtype)).sum(-1)  # [b, h, q]
        den = w.sum(-1)
        frac = torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, float("nan")))
        ok = eligible[:, None, :] & ~torch.isnan(frac)
        n = ok.sum(-1)
        val = torch.where(ok, frac, torch.zeros_like(frac)).sum(-1) / n.clamp_min(1)
        val[n == 0] = float("nan")
        out[:, layer, record.heads[layer]] = val.to(torch.float64)
        mass[:, layer, record.heads[layer]] = non_first_mass(a, mask, qpos, eligible)
    return BatchScores(out, non_first_mass=mass)


def argmax_hits(record: CaptureRecord, meta: Mapping[str, Any], target: torch.Tensor, *, detector: str,
                keys: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> BatchScores:
    """Per sequence and head: the fraction of eligible query rows whose most-attended allowed key is a
    target (same arguments and eligibility as ``target_mass``; ``non_first_mass`` likewise)."""
    patterns = require_site(record, Site.PATTERN, detector)
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    keys = causal_keys(mask) if keys is None else keys.cpu().bool()
    target = target.cpu().bool()
    b = mask.shape[0]
    out = empty_scores(b, n_layers, n_heads)
    mass = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)
        p_q, k_q, eligible, qpos = _rows(record, a, target, keys, rows)
        masked = a.masked_fill(~k_q[:, None], float("-inf"))
        best = masked.argmax(-1)  # [b, h, q]
        hit = p_q[:, None].expand(-1, a.shape[1], -1, -1).gather(-1, best[..., None]).squeeze(-1)
        e = eligible[:, None, :].to(torch.float64)
        n = e.sum(-1).expand(-1, a.shape[1])  # [b, h]
        val = (hit.to(torch.float64) * e).sum(-1) / n.clamp_min(1)
        val[n == 0] = float("nan")
        out[:, layer, record.heads[layer]] = val
        mass[:, layer, record.heads[layer]] = non_first_mass(a, mask, qpos, eligible)
    return BatchScores(out, non_first_mass=mass)
