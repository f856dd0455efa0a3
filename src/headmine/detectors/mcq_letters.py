"""Multiple-choice letter heads (Lieberum et al. 2023, "Does Circuit Analysis Interpretability Scale?
Evidence from Multiple Choice Capabilities in Chinchilla", arXiv 2307.09458, §3-4: the output heads
found by direct logit attribution, sorted by their attention pattern from the final token; survey:
Correct Letter Head, Single Letter Head). Both read the attention of the last prompt token ("Answer:",
where the letter is predicted) on the four option letters of the open question (probe ``mcq``).

- ``correct_letter``: the head attends to the letter of the CORRECT option. Score per prompt: the raw
  attention from the last token to the correct letter's token.
- ``single_letter``: the head attends to ONE letter whatever the answer (e.g. always to "B"). Score:
  within each batch, the head's favourite letter is the one it attends to most on average; the score
  per prompt is the raw attention on that letter. A correct-letter head's favourite letter is right only
  about a quarter of the time (the correct letter is shuffled over A-D), so it scores low here, and a
  head that spreads its attention evenly (the paper's "constant" heads) scores about a quarter of its
  letter mass. Choosing the favourite within a batch of b prompts biases the mean up by the noise of the
  largest of four means; the threshold (0.5) sits above what a correct-letter head reaches when one
  letter is correct in up to half of a batch's prompts (the scan's default batch is 8).

Causal check for both: mean-ablating the top-k heads should raise the cross-entropy of the correct
letter more than ablating k random heads (the paper's heads are the ones with direct effect on it). That
needs a model that maps answer content to letters: SmolLM2-135M-Instruct and Gemma 3 270M answer the
packaged questions at chance in every format tried (bench/results/detectors_b.md), so on them the check
cannot confirm the type; the detectors are tested on planted patterns and loop oracles.
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
from headmine.detectors.target_mass import last_token_attention, meta_tensor


def letter_attention(record: CaptureRecord, meta: Mapping[str, Any], detector: str) -> dict[int, torch.Tensor]:
    """Per layer: [b, h, 4] attention from each prompt's last token to its four option letters (NaN for a
    prompt whose last-token row was not captured)."""
    return last_token_attention(record, meta_tensor(meta, "letter_pos", detector, "mcq"), detector)


def correct_letter_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Raw attention from the last token to the correct option's letter, per prompt."""
    n_layers, n_heads = n_layers_heads(record, meta)
    correct = meta_tensor(meta, "correct", "correct_letter", "mcq").cpu()
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, vals in letter_attention(record, meta, "correct_letter").items():
        pick = vals.gather(2, correct[:, None, None].expand(-1, vals.shape[1], 1))[..., 0]
        out[:, layer, record.heads[layer]] = pick.to(torch.float64)
    return BatchScores(out)


def single_letter_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Raw attention from the last token to the head's favourite letter in this batch, per prompt."""
    n_layers, n_heads = n_layers_heads(record, meta)
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, vals in letter_attention(record, meta, "single_letter").items():
        favourite = vals.nanmean(0).nan_to_num(-1.0).argmax(-1)  # [h]
        pick = vals.gather(2, favourite[None, :, None].expand(vals.shape[0], -1, 1))[..., 0]
        out[:, layer, record.heads[layer]] = pick.to(torch.float64)
    return BatchScores(out)


CORRECT_LETTER = register(Detector(
    name="correct_letter", head_type="Correct Letter Head", task="mcq", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="mcq"), score=correct_letter_score, threshold=0.3,
    definition="attention from the answer position to the correct option's letter (Lieberum et al. 2023); its causal "
               "check needs a model that answers the MCQs above chance (SmolLM2-135M, Gemma 3 270M do not)",
))
SINGLE_LETTER = register(Detector(
    name="single_letter", head_type="Single Letter Head", task="mcq", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="mcq"), score=single_letter_score, threshold=0.5,
    definition="attention from the answer position to one fixed option letter, whatever the answer "
               "(Lieberum et al. 2023); its causal check needs a model that answers the MCQs above chance",
))
