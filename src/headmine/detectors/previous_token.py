"""Previous-token heads (survey: Previous Token Head, In-Context Identification).

Score: TransformerLens "mul" template score with ``P[i, i-1] = 1`` on real tokens, key 0
excluded (it is the attention sink; see ``template_score``). Read on repeated random tokens (the
catalog's task for this type, and the pass the induction detectors already make): Olsson et al.
use natural text, but random tokens work for every tokenizer (a toy vocabulary turns the corpus
into unknown tokens) and keep content cues out of the score.
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
    previous_template,
    register,
    template_score,
)

NAME = "previous_token"


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Fraction of (non-first-token) attention that goes to the previous token, per sequence."""
    return template_score(record, previous_template(record.input_ids), meta, exclude_bos=True, detector=NAME)


DETECTOR = register(Detector(
    name=NAME, head_type="Previous Token Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    score=score, threshold=0.4, definition="attention mass on position i-1 (key 0 excluded)",
))
