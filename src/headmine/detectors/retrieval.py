"""Retrieval heads (Wu et al. 2024; survey: Retrieval Head), needle-in-a-haystack with greedy decoding.

At each greedy decoding step the scan captures the attention row of the newest position. With
``w`` the token generated at that step, a head makes a copy-paste event when its most-attended
input position j* lies inside the needle span and ``x_{j*} == w``; each event adds
``1 / needle_length`` (the reference repo's counting). This module scores ONE decoding step;
the scan sums the steps of a test, keeps only tests the model got right (recall of the needle's
tokens in the generated text > 50%), and averages over tests. Retrieval head: score > 0.1.

Meta per step: ``needle_span`` [B, 2] (start, end exclusive, positions in the prompt),
``generated`` [B] (the token produced from this step's last row).
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
    n_layers_heads,
    register,
    require_site,
)

NAME = "retrieval"


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Per prompt: 1/needle_length when the head copy-pastes this step's token from the needle, else 0."""
    patterns = require_site(record, Site.PATTERN, NAME)
    n_layers, n_heads = n_layers_heads(record, meta)
    ids = record.input_ids.cpu()
    b = ids.shape[0]
    span = torch.as_tensor(meta["needle_span"]).long().cpu().view(b, 2)
    gen = torch.as_tensor(meta["generated"]).long().cpu().view(b)
    length = (span[:, 1] - span[:, 0]).clamp_min(1).to(torch.float64)
    out = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)[:, :, -1, :]  # [b, h, k] (last captured query row)
        j = a.argmax(-1)  # [b, h]
        inside = (j >= span[:, :1]) & (j < span[:, 1:])
        same = ids.gather(1, j) == gen[:, None]
        out[:, layer, record.heads[layer]] = (inside & same).to(torch.float64) / length[:, None]
    return BatchScores(out)


DETECTOR = register(Detector(
    name=NAME, head_type="Retrieval Head", task="needle", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="needle"),
    also_finds=(("Global Retrieval Head", "heads that keep retrieving across the whole context"),),
    score=score, threshold=0.1, definition="share of needle tokens copy-pasted by the head while decoding",
))
