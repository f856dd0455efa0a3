"""Constant heads (survey: Constant Head): from the answer position of a multiple-choice prompt, attention
spread evenly over the four option letters, whatever the correct answer.

Definition. Lieberum et al. 2023 ("Does Circuit Analysis Interpretability Scale? Evidence from Multiple
Choice Capabilities in Chinchilla", arXiv 2307.09458, §3.2, the output heads sorted by attention pattern
from the final token): besides correct-letter heads (attention on the correct option's letter) and
single-letter heads (attention on one letter), "constant" heads attend roughly equally to all the option
letters, so their output does not depend on which option is correct. Read on the ``mcq`` probe (the last
token "Answer:" and the four letters of the open question; see ``mcq_letters`` for the two other kinds):

``constant_letters`` = per prompt, 4 x the smallest of the four raw attentions from the last token to the
letters = (attention mass on the letters) x (4 x the smallest letter's share of it): the mass that is spread
equally over all four letters. A head with mass M spread uniformly scores M; a head on one letter (correct
or single) scores 0, whatever its mass; a head putting a share below 1/4 on some letter is discounted in
proportion. Raw attention, as the two letter detectors use, so the attention sink counts against the mass.

Causal check: mean-ablating the top-k heads should raise the cross-entropy of the correct letter more than
k random heads (``mcq``: loss_correct_letter). The paper's constant heads have a small direct effect that
does not favour the correct letter, and the check needs a model that answers the questions above chance:
SmolLM2-135M and Gemma 3 270M answer the packaged MCQs at chance (bench/results/detectors_b.md), so on them
the check cannot confirm the type; the detector is tested on planted patterns and a loop oracle.
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
)
from headmine.detectors.mcq_letters import letter_attention


def constant_letters_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """4 x the smallest raw attention from the last token to one of the four option letters, per prompt."""
    n_layers, n_heads = n_layers_heads(record, meta)
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, vals in letter_attention(record, meta, "constant_letters").items():  # [b, h, 4]
        out[:, layer, record.heads[layer]] = (vals.shape[-1] * vals.min(-1).values).to(torch.float64)
    return BatchScores(out)


DETECTOR = register(Detector(
    name="constant_letters", head_type="Constant Head", task="mcq", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="mcq"), score=constant_letters_score, threshold=0.2,
    definition="attention from the answer position spread evenly over the four option letters: 4 x the smallest "
               "letter's attention (Lieberum et al. 2023); its causal check needs a model that answers the MCQs "
               "above chance (SmolLM2-135M, Gemma 3 270M do not)",
))
