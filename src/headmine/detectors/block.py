"""Block heads (survey: Block Head): attention kept inside the query's own sentence.

Definition. Pande et al. 2021 (The Heads Hypothesis, §3) define a block role for a head whose attention
stays within the segment (sentence) of the query, tested against what the head would put there by
chance. In a causal model a local head (previous token, the query itself) trivially stays in the
sentence, so those keys are left out, and the chance level is subtracted:

``block`` = per query row in the second or later sentence of a window (so an earlier sentence exists)
with at least one same-sentence key besides itself and its previous token, the attention on earlier
keys of the same sentence over the attention on all real keys but the first, the query and its previous
token, minus the share of same-sentence keys among those keys (what uniform attention would give);
averaged over rows. Sentences come from ``annotated_text`` (a token ending in . ! ? closes one). A
perfect block head scores 1 - chance (about 0.5-0.7 on 64-token windows); uniform attention scores 0.

Causal check: next-token loss on natural text (``annotated_text``).
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
    CausalCheckSpec,
    Detector,
    query_positions,
    register,
    require_site,
)
from headmine.detectors.token_targets import causal_keys, target_mass


def block_parts(sentence_id: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target, allowed keys, rows): same-sentence keys, non-local keys, rows past the first sentence."""
    keys = causal_keys(mask, drop_current=True, drop_previous=True)
    sid = sentence_id.cpu()
    target = keys & (sid[:, :, None] == sid[:, None, :]) & (sid[:, :, None] >= 0)
    first = torch.where(sid >= 0, sid, torch.full_like(sid, 1 << 30)).min(-1, keepdim=True).values
    rows = sid > first
    return target, keys, rows


def chance_level(record: CaptureRecord, target: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[b]: mean over the eligible captured rows of |target| / |allowed keys| (NaN where none)."""
    patterns = require_site(record, Site.PATTERN, "block")
    n_q = next(iter(patterns.values())).shape[2]
    qpos = query_positions(record, n_q)
    r = torch.arange(target.shape[0])[:, None]
    t_q, k_q = target[r, qpos], keys[r, qpos]
    ok = t_q.any(-1) & rows[r, qpos] & record.attention_mask.cpu().bool()[r, qpos]
    ratio = t_q.sum(-1).to(torch.float64) / k_q.sum(-1).clamp_min(1)
    n = ok.sum(-1)
    out = (ratio * ok).sum(-1) / n.clamp_min(1)
    out[n == 0] = float("nan")
    return out


def block_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Same-sentence attention (local keys excluded) minus its uniform-attention chance level."""
    if "sentence_id" not in meta:
        raise DetectorError("block needs the batch metadata 'sentence_id'", "run it on the annotated_text task")
    target, keys, rows = block_parts(torch.as_tensor(meta["sentence_id"]), record.attention_mask)
    mass = target_mass(record, meta, target, keys=keys, rows=rows, detector="block")
    chance = chance_level(record, target, keys, rows)
    return BatchScores(mass.values - chance[:, None, None], non_first_mass=mass.non_first_mass)


DETECTOR = register(Detector(
    name="block", head_type="Block Head", task="annotated_text", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="annotated_text"), score=block_score, threshold=0.3,
    definition="attention inside the query's sentence (local keys excluded) minus the uniform chance level",
))
