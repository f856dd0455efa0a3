"""Interrogation heads (survey: Interrogation Head): attention to the question's interrogative material.

Definition. Correia et al. 2019 (Adaptively Sparse Transformers, §5 analysis of head specialisation)
show a head specialised on interrogation: its attention concentrates on question material (question
marks and the words that open a question). The paper describes it from attention maps; the operational
score here is ours, in the same terms:

``interrogation`` = per query row of a question (a sentence holding interrogative material before the
row), the attention on the earlier wh-words (what, who, where, when, why, how, which, whose, whom) and
question marks of the same sentence, over the attention on every real key but the first and the query
itself (``target_mass``), averaged over rows; text: the packaged ``questions`` task. Uniform attention
scores the share of such tokens among the keys (a few percent).

Causal check: ablating the top heads should raise the next-token loss on the question marks (``questions``:
loss_question_mark) more than as many random heads: knowing that a question is ending needs its
interrogative opening, carried to the end of the question.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.token_targets import causal_keys, target_mass


def interrogation_target(interrogative: torch.Tensor, sentence_id: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Bool [b, T, T]: key j is interrogative material of the query's own sentence."""
    same = (sentence_id[:, :, None] == sentence_id[:, None, :]) & (sentence_id[:, :, None] >= 0)
    return keys & same & interrogative.bool()[:, None, :]


def interrogation_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Renormalised attention on the sentence's earlier wh-words and question marks."""
    for key in ("interrogative", "sentence_id"):
        if key not in meta:
            raise DetectorError(f"interrogation needs the batch metadata {key!r}", "run it on the questions task")
    keys = causal_keys(record.attention_mask, drop_current=True)
    target = interrogation_target(torch.as_tensor(meta["interrogative"]).cpu(),
                                  torch.as_tensor(meta["sentence_id"]).cpu(), keys)
    return target_mass(record, meta, target, keys=keys, detector="interrogation")


DETECTOR = register(Detector(
    name="interrogation", head_type="Interrogation Head", task="questions", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="questions"), score=interrogation_score, threshold=0.4,
    definition="attention on the question's earlier wh-words and question marks (first key and query excluded)",
))
