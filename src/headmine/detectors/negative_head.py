"""Negative heads (Yu, Song et al. 2024, "Correcting Negative Bias in Large Language Models through Negative
Attention Score Alignment", arXiv 2408.00137, NAACL 2025, §3 "negative attention score"; survey: Negative Head).

In binary decisions whose instruction lists the answer candidates ("... Answer Yes or No."), the paper finds
heads that, from the positions where the answer is generated, attend to the NEGATIVE candidate token of the
instruction whatever the question, and links them to the model's bias towards "No". Their negative attention
score of a head, summed over the answer positions i (the positions after the instruction prefix) with
``a_i^+``/``a_i^-`` its attention from i to the positive/negative candidate token:

    NAS = sum_i (a_i^+ + a_i^-) * log(a_i^- / a_i^+)

the log-ratio says which candidate the head prefers and the factor in front how much it attends to the
candidates at all. (The paper's text was not retrievable here; the formula is as secondary summaries of §3
state it. The paper ranks heads by NAS; the threshold below is ours.)

Score here (probe ``yes_no``: balanced true/false facts, the order of "Yes"/"No" in the instruction
alternating): one answer position per prompt, the last token, which predicts " Yes"/" No"; NAS per prompt
with ``eps = 1e-6`` added to both attentions inside the log, averaged over prompts. Threshold 0.1 (e.g. 0.15 of
the head's attention on the two options at a 2:1 ratio for "No"). A head that attends to whichever option comes
second scores about 0, since "No" is second in only half of the prompts.

Causal check: mean-ablating the top-k heads should LOWER the model's negative bias, the mean over prompts of
log P(" No") - log P(" Yes") at the answer position, more than ablating k random heads (expected sign -1).
Measured (bench/results/detectors_c.md): confirmed on Gemma 3 270M (-0.86 vs -0.01); on SmolLM2-135M the
top-NAS heads exist (L13H6 1.23) but ablating them RAISES the No bias (+0.46), so there the signature does
not carry the paper's causal role.
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

EPS = 1e-6


def option_attention(record: CaptureRecord, meta: Mapping[str, Any], detector: str = "negative_head"
                     ) -> dict[int, torch.Tensor]:
    """Per layer: [b, h, 2] attention from each prompt's last token to its "Yes" and "No" option tokens (NaN for
    a prompt whose last-token row was not captured)."""
    yes = meta_tensor(meta, "yes_pos", detector, "yes_no")
    no = meta_tensor(meta, "no_pos", detector, "yes_no")
    return last_token_attention(record, torch.stack([yes, no], 1), detector)


def negative_attention_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """NAS = (a_yes + a_no) * log(a_no / a_yes) at the answer position, per prompt."""
    n_layers, n_heads = n_layers_heads(record, meta)
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, vals in option_attention(record, meta).items():
        v = vals.to(torch.float64)
        pos, neg = v[..., 0], v[..., 1]
        out[:, layer, record.heads[layer]] = (pos + neg) * torch.log((neg + EPS) / (pos + EPS))
    return BatchScores(out)


NEGATIVE_HEAD = register(Detector(
    name="negative_head", head_type="Negative Head", task="yes_no", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="yes_no", expected_sign=-1), score=negative_attention_score, threshold=0.1,
    definition="negative attention score (a_yes + a_no) log(a_no / a_yes) from the answer position to the 'No' and "
               "'Yes' options of a yes/no instruction (Yu et al. 2024); its check: ablation lowers log P(No) - log P(Yes)",
))
