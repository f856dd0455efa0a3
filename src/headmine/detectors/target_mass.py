"""Shared pieces of the pattern detectors that compare a head's attention with a per-task target set:
the raw target mass (no renormalisation), the n-gram template, a template from one target key per
query row read from the batch metadata, and the attention from each prompt's last token to given keys.

``target_mass_score`` is the evaluator of Olsson's prefix matching generalised to any template: for each
eligible query row (one with at least one target), the head's attention summed over the targets, averaged
over those rows. Rows sum to one, so the number lies in [0, 1], and a head that parks its attention on the
first token scores low (unlike ``template_score``, which renormalises after dropping key 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    empty_scores,
    n_layers_heads,
    query_positions,
    require_site,
)


def target_mass_score(record: CaptureRecord, template: torch.Tensor, meta: Mapping[str, Any], *,
                      detector: str) -> BatchScores:
    """[item, layer, head]: mean over eligible query rows of the attention summed over ``template``'s
    targets (Bool [batch, T, T], query i, key j); NaN for a sequence without an eligible row."""
    patterns = require_site(record, Site.PATTERN, detector)
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    p = template.cpu().bool() & mask[:, None, :] & mask[:, :, None]
    b = mask.shape[0]
    out = empty_scores(b, n_layers, n_heads)
    rows = torch.arange(b)[:, None]
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)  # [b, h, q, k]
        qpos = query_positions(record, a.shape[2])
        p_q = p[rows, qpos]  # [b, q, k]
        eligible = (p_q.any(-1) & mask[rows, qpos]).to(a.dtype)  # [b, q]
        per_row = (a * p_q[:, None].to(a.dtype)).sum(-1)  # [b, h, q]
        n = eligible.sum(-1)
        val = (per_row * eligible[:, None]).sum(-1) / n.clamp_min(1)[:, None]
        val[n == 0] = float("nan")
        out[:, layer, record.heads[layer]] = val.to(torch.float64)
    return BatchScores(out)


def ngram_template(input_ids: torch.Tensor, n: int) -> torch.Tensor:
    """P[b, i, j] = the n-1 tokens ending at i equal the n-1 tokens ending at j-1, and j-1 < i.

    The key j is the token that FOLLOWED an earlier occurrence of the current (n-1)-gram; n = 2 is the
    induction template (``tok_{j-1} == tok_i``)."""
    if n < 2:
        raise DetectorError(f"an n-gram template needs n >= 2, got {n}")
    ids = input_ids.cpu()
    b, t = ids.shape
    same = ids[:, :, None] == ids[:, None, :]  # [b, i, j'] with j' = j - 1
    ctx = same.clone()
    for m in range(1, n - 1):
        shifted = torch.zeros_like(same)
        shifted[:, m:, m:] = same[:, : t - m, : t - m]
        ctx &= shifted
    ctx &= torch.ones(t, t, dtype=torch.bool).tril(-1)
    out = torch.zeros(b, t, t, dtype=torch.bool)
    out[:, :, 1:] = ctx[:, :, : t - 1]
    return out


def key_per_query_template(targets: torch.Tensor, t: int) -> torch.Tensor:
    """Bool [batch, t, t] from ``targets`` LongTensor [batch, >= t]: query i's one target key is
    ``targets[b, i]`` (-1: none)."""
    tg = targets.cpu()[:, :t]
    return (tg[:, :, None] == torch.arange(t)[None, None, :]) & (tg[:, :, None] >= 0)


def meta_tensor(meta: Mapping[str, Any], key: str, detector: str, task: str) -> torch.Tensor:
    """``meta[key]`` as a tensor, or a DetectorError naming the probe task that provides it."""
    value = meta.get(key)
    if not isinstance(value, torch.Tensor):
        raise DetectorError(f"detector {detector!r} needs batch metadata {key!r}",
                            f"score it on batches of the {task!r} probe task")
    return value


def last_token_attention(record: CaptureRecord, keys: torch.Tensor, detector: str) -> dict[int, torch.Tensor]:
    """Per layer: [b, h, k] raw attention from each prompt's last real token to its key positions ``keys``
    ([b, k], e.g. the option letters of a multiple-choice prompt); NaN for a prompt whose last-token row was
    not captured (a scan that keeps only some query rows)."""
    patterns = require_site(record, Site.PATTERN, detector)
    keys = keys.cpu().long()
    mask = record.attention_mask.cpu().bool()
    end = mask.sum(1) - 1
    b = mask.shape[0]
    out = {}
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)  # [b, h, q, k]
        hit = query_positions(record, a.shape[2]) == end[:, None]  # [b, q]
        rows = a[torch.arange(b), :, hit.float().argmax(1)]  # [b, h, k]
        vals = rows.gather(2, keys[:, None, :].expand(b, rows.shape[1], keys.shape[1]))
        vals[~hit.any(1)] = float("nan")
        out[layer] = vals
    return out
