"""Letter mover heads (García-Carrasco, Maté and Trujillo 2024, "How does GPT-2 Predict Acronyms? Extracting and
Understanding a Circuit via Mechanistic Interpretability", arXiv 2405.04156, AISTATS 2024, §4-5; survey: Letter
Mover Head).

In GPT-2's acronym circuit ("The Chief Executive Officer (C" -> "E" -> "O"), the letter mover heads attend from
the position that predicts the k-th letter to the k-th word (the token carrying its capital initial) and copy
that initial into the prediction (their OV circuit maps the word to its first letter); path patching picks them
as the heads with direct effect on the letter logits.

Score here (probe ``acronyms``: made-up three-word names, letters as single-letter tokens, see the task): the
share of the head's attention, key 0 excluded and renormalised (``template_score``), that goes from each of
the three letter-predicting positions ("(", then the first two letters) to the word whose initial comes next,
averaged over those rows and the prompts. Threshold 0.4 (as induction); no head is labelled on less than 10%
of its attention off the first token.

Causal check: mean-ablating the top-k heads should raise the cross-entropy of the correct next letter (lower
its log-probability) more than ablating k random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register, template_score
from headmine.detectors.target_mass import meta_tensor


def letter_template(input_ids: torch.Tensor, meta: Mapping[str, Any]) -> torch.Tensor:
    """Bool [B, T, T]: True at (position predicting letter k, word k)."""
    query = meta_tensor(meta, "query_pos", "letter_mover", "acronyms").cpu()
    word = meta_tensor(meta, "word_pos", "letter_mover", "acronyms").cpu()
    b, t = input_ids.shape
    out = torch.zeros(b, t, t, dtype=torch.bool)
    rows = torch.arange(b)[:, None].expand_as(query)
    out[rows, query, word] = True
    return out


def letter_mover_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Share of (non-first-token) attention from each letter-predicting position to the word it spells."""
    return template_score(record, letter_template(record.input_ids, meta), meta, exclude_bos=True,
                          detector="letter_mover")


LETTER_MOVER = register(Detector(
    name="letter_mover", head_type="Letter Mover Head", task="acronyms", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="acronyms"), score=letter_mover_score, threshold=0.4,
    definition="attention share from the position predicting an acronym's k-th letter to the k-th word "
               "(García-Carrasco et al. 2024); its check: ablation raises the loss of the correct letters",
))
