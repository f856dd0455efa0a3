"""CMR-like heads (Ji-An, Zhou, Benna and Mattar 2024, "Linking In-context Learning in Transformers to Human
Episodic Memory", arXiv 2405.14992, NeurIPS 2024, §4 "CMR distance", Fig. 2c, 5 and 6; survey: CMR-like Head).

The paper reads a head the way free recall is read in memory experiments: on repeated random tokens, take a
query token in the second copy whose first occurrence is at index i of the first copy, and record the head's
attention to the first copy's position i + lag for lags -5..+5 (the lag-CRP of the head; an induction head
peaks at lag +1, a duplicate-token head at lag 0). A head is CMR-like when the context maintenance and
retrieval model of human episodic memory reproduces that profile: its CMR distance, the variance-normalised
MSE between the head's profile and the best CMR lag-CRP over a grid of (beta_enc, beta_rec, gamma_ft), both
shifted to a minimum of 0 and the CRP rescaled to the head's maximum, is below 0.5 (``cmr_model``).

Score here: per sequence, the head's profile is its attention averaged over the second-copy queries whose lags
-5..+5 all fall inside the first copy (raw attention, key 0 kept: the distance is invariant to the scale of
the profile, so a head that parks attention on the sink is judged by the shape of what is left); the score is
``1 - CMR distance`` (an R^2 of the CMR fit: 1 is a perfect fit, 0 no better than a flat line), averaged over
sequences. Threshold 0.5, the paper's distance < 0.5. The paper fits the profile averaged over its whole
prompt; averaging per-sequence fits is what the scan's streaming accumulator allows, and on the default 50-token
copies a sequence's profile already averages 40 queries (on SmolLM2 the two agree to 0.002 on the top 12 heads). CMR's lag-CRPs come from our own simulation on a coarser
grid than the paper's (``cmr_model``).

Causal check (the paper's Fig. 8 ablates the top 10% CMR-like heads against as many random heads and finds
in-context learning hurt): mean-ablating the top-k heads should raise the loss on the second copy of repeated
random tokens (the in-context copy they implement) more than ablating k random heads. Measured
(bench/results/detectors_c.md): SmolLM2's CMR-like heads are its induction (lag +1) and duplicate-token (lag 0)
heads, and its top 27 (10%) raise that loss +9.7 nats vs +1.9 for random sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    empty_scores,
    n_layers_heads,
    query_positions,
    register,
    require_site,
)
from headmine.detectors.cmr_model import MAX_LAG, cmr_distance

LAGS = tuple(range(-MAX_LAG, MAX_LAG + 1))


def lag_profiles(record: CaptureRecord, meta: Mapping[str, Any], detector: str = "cmr_like") -> dict[int, torch.Tensor]:
    """Per layer: [b, h, 2 * MAX_LAG + 1] mean attention from second-copy queries to the first copy by lag
    (NaN for a sequence with no eligible query captured)."""
    patterns = require_site(record, Site.PATTERN, detector)
    try:
        seq_len = int(meta["seq_len"])
        start = int(meta["block_starts"][0])
    except (KeyError, IndexError, TypeError) as err:
        raise DetectorError(f"detector {detector!r} needs the repeated_tokens batch meta (seq_len, block_starts)",
                            "scan it on the repeated_tokens task") from err
    # seq_len < 2 * MAX_LAG + 1 leaves no query whose lags all fall in the first copy: every profile is NaN
    mask = record.attention_mask.cpu().bool()
    b = mask.shape[0]
    lags = torch.tensor(LAGS)
    out = {}
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)  # [b, h, q, k]
        qpos = query_positions(record, a.shape[2])  # [b, q]
        index = qpos - start - seq_len  # index of the query's token in the first copy
        eligible = (index >= MAX_LAG) & (index < seq_len - MAX_LAG) & mask[torch.arange(b)[:, None], qpos]
        keys = (start + index[:, :, None] + lags).clamp(0, a.shape[3] - 1)  # [b, q, L]; ineligible rows weigh 0
        vals = a.gather(3, keys[:, None].expand(b, a.shape[1], -1, -1))  # [b, h, q, L]
        w = eligible.to(a.dtype)[:, None, :, None]
        n = eligible.sum(1).to(a.dtype)  # [b]
        prof = (vals * w).sum(2) / n.clamp_min(1)[:, None, None]
        prof[n == 0] = float("nan")
        out[layer] = prof
    return out


def cmr_like_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """1 - CMR distance of each sequence's attention-by-lag profile, per head."""
    n_layers, n_heads = n_layers_heads(record, meta)
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, prof in lag_profiles(record, meta).items():
        dist, _ = cmr_distance(prof.to(torch.float64).numpy())
        out[:, layer, record.heads[layer]] = torch.from_numpy(1.0 - np.asarray(dist))
    return BatchScores(out)


CMR_LIKE = register(Detector(
    name="cmr_like", head_type="CMR-like Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"), score=cmr_like_score, threshold=0.5,
    definition="1 - CMR distance: how well the CMR model of episodic memory fits the head's attention by lag "
               "(-5..+5) from second-copy tokens to the first copy of repeated random tokens (Ji-An et al. 2024; "
               "CMR-like at distance < 0.5)",
))
