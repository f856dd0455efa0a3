"""Induction heads (survey: Induction Head, Latent Reasoning): the induction template score and
Olsson et al.'s prefix-matching score, both on repeated random tokens.

- ``induction``: "mul" template score with ``P[i, j] = 1`` iff ``tok_{j-1} == tok_i`` and
  ``j - 1 < i`` (TransformerLens), over query rows that have an earlier copy, key 0 excluded.
- ``prefix_matching``: Olsson's evaluator. The methods file marks its averaging as uncertain;
  chosen definition: for each query i with an earlier copy, the *sum* of its attention over all
  positions that followed an earlier copy of tok_i (no renormalisation, key 0 kept in the
  denominator since rows sum to 1), averaged over those queries. It lies in [0, 1] and, unlike
  ``induction``, is not renormalised after dropping the sink, so a head that parks most of its
  attention on the first token scores low.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    empty_scores,
    induction_template,
    n_layers_heads,
    query_positions,
    register,
    require_site,
    template_score,
)


def induction_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Fraction of (non-first-token) attention on tokens that followed earlier copies, per sequence."""
    return template_score(record, induction_template(record.input_ids), meta, exclude_bos=True, detector="induction")


def prefix_matching_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Mean over eligible queries of the raw attention summed over induction targets."""
    patterns = require_site(record, Site.PATTERN, "prefix_matching")
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    p = induction_template(record.input_ids) & mask[:, None, :] & mask[:, :, None]
    b = mask.shape[0]
    out = empty_scores(b, n_layers, n_heads)
    rows = torch.arange(b)[:, None]
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)
        qpos = query_positions(record, a.shape[2])
        p_q = p[rows, qpos]
        eligible = (p_q.any(-1) & mask[rows, qpos]).to(a.dtype)  # [b, q]
        per_row = (a * p_q[:, None].to(a.dtype)).sum(-1)  # [b, h, q]
        n = eligible.sum(-1)  # [b]
        val = (per_row * eligible[:, None]).sum(-1) / n.clamp_min(1)[:, None]
        val[n == 0] = float("nan")
        out[:, layer, record.heads[layer]] = val.to(torch.float64)
    return BatchScores(out)


INDUCTION = register(Detector(
    name="induction", head_type="Induction Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    score=induction_score, threshold=0.4,
    definition="attention mass on the token after an earlier copy (key 0 excluded)",
))
PREFIX_MATCHING = register(Detector(
    name="prefix_matching", head_type="Induction Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    score=prefix_matching_score, threshold=0.3,
    definition="raw attention summed over tokens that followed earlier copies (Olsson)",
))
