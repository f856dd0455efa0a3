"""Arithmetic heads (Zhang et al. 2024, "Interpreting and Improving Large Language Models in Arithmetic
Calculation", arXiv 2409.01659, ICML 2024, §3: a small share of heads (< 5%) attend from the last
position to the operands and the operator and carry what yields the result; survey: Arithmetic Head).
The paper finds them with path patching and then reads their attention; here the attention is the
score and the causal check (ablation against random heads) confirms it.

``arithmetic_operands`` (probe ``arithmetic_probe``): per prompt, with m_a and m_b the raw attention from
the last token ("=") to the tokens of the first and of the second operand of the open problem (meta
``a_span``/``b_span``), the score is 2 min(m_a, m_b): 1 for a head that splits its attention evenly over
both operands, 0 for one that reads only one of them. Reading BOTH is what the type needs (the result
depends on both), and it keeps out previous-token heads, which at "=" put all their attention on the
last digit of the second operand. The prompts keep two solved problems in front, so a head that
attends to digits in general spreads its attention over them and scores lower than one that reads the
open problem.

Causal check: mean-ablating the top-k heads should raise the cross-entropy of the answer more than
ablating k random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.target_mass import meta_tensor, target_mass_score


def _span_mass(record: CaptureRecord, meta: Mapping[str, Any], key: str) -> torch.Tensor:
    """[b, layer, head]: raw attention from the last token to the tokens of ``meta[key]`` ([b, 2] spans)."""
    span = meta_tensor(meta, key, "arithmetic_operands", "arithmetic_probe").cpu()
    mask = record.attention_mask.cpu().bool()
    t = mask.shape[1]
    pos = torch.arange(t)[None, :]
    is_last = pos == (mask.sum(1) - 1)[:, None]  # [b, q]
    inside = (pos >= span[:, :1]) & (pos < span[:, 1:])  # [b, k]
    return target_mass_score(record, is_last[:, :, None] & inside[:, None, :], meta,
                             detector="arithmetic_operands").values


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """2 min(m_a, m_b): attention from the last token on the first and on the second operand."""
    return BatchScores(2 * torch.minimum(_span_mass(record, meta, "a_span"), _span_mass(record, meta, "b_span")))


DETECTOR = register(Detector(
    name="arithmetic_operands", head_type="Arithmetic Head", task="arithmetic_probe",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="arithmetic_probe"), score=score, threshold=0.4,
    definition="attention from the answer position to both operands: 2 min(m_a, m_b) (Zhang et al. 2024)",
))
