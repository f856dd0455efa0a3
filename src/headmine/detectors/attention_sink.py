"""Attention-sink heads (Gu et al. 2025; the sink part of the survey's Streaming Head), on natural text.

``attention_sink``: alpha_first = mean over real query rows i >= 1 of ``A[i, 0]`` (the mass on
the first token; row 0 is skipped since it can only attend to itself). A head is labelled an
attention-sink head when alpha_first >= epsilon = 0.3.

A sink head is not thereby *dormant* (the survey's Active-Dormant Head: a head whose removal does not
hurt). That needs interventions, so the scan's causal step moves all of each sink head's attention to
the first token and records the KL to the clean output (method ``dormant``, metric
``kl_move_to_first``); a head is labelled dormant only when that KL is below ``DORMANT_KL``, and the
dormant heads together get a causal check that expects NO harm (ablating them costs no more than
ablating as many random heads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine import catalog
from headmine.capture.records import CaptureRecord
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

EPSILON = 0.3
DORMANT_KL = 1e-3
"""Nats per token. Moving a dormant head's attention to the first token must change the next-token
distribution by less than this: a thousandth of a nat is far below the per-token loss differences that
any head-level finding in this library rests on (0.01-1 nats), and far below what moving an active
head's attention costs."""


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Mean attention on key 0 over real query rows >= 1, per sequence."""
    patterns = require_site(record, Site.PATTERN, "attention_sink")
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    b = mask.shape[0]
    rows = torch.arange(b)[:, None]
    out = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)
        qpos = query_positions(record, a.shape[2])
        elig = ((qpos >= 1) & mask[rows, qpos]).to(a.dtype)
        val = (a[..., 0] * elig[:, None]).sum(-1) / elig.sum(-1).clamp_min(1)[:, None]
        val[elig.sum(-1) == 0] = float("nan")
        out[:, layer, record.heads[layer]] = val.to(torch.float64)
    return BatchScores(out)


DETECTOR = register(Detector(
    name="attention_sink", head_type="Attention Sink Head", stage="In-Context Identification", task="natural_text",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="natural_text", dormant_below=DORMANT_KL),
    also_finds=(("Streaming Head", "sink part"),),  # Delimiter Head has its own detector (``delimiter``)
    score=score, threshold=EPSILON, definition="mean attention on the first token (alpha_first)",
))
catalog.register_link("Active-Dormant Head", catalog.DetectorLink(
    detector="attention_sink", task="natural_text", kind="defining_test",
    note=f"dormancy test: moving the head's attention to the first token changes the output by < {DORMANT_KL} nats"))
