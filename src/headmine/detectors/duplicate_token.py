"""Duplicate-token heads (survey: Duplicate Token Head, In-Context Identification).

Score: "mul" template score with ``P[i, j] = 1`` iff ``tok_j == tok_i`` and ``j < i``, over the
query rows whose token occurred before (repeated random tokens: the second repeat), key 0 excluded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    duplicate_template,
    register,
    template_score,
)

NAME = "duplicate_token"


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Fraction of attention on earlier copies of the current token, per sequence."""
    return template_score(record, duplicate_template(record.input_ids), meta, exclude_bos=True, detector=NAME)


DETECTOR = register(Detector(
    name=NAME, head_type="Duplicate Token Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    score=score, threshold=0.4, definition="attention mass on earlier copies of the same token",
))
