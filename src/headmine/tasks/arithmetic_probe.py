"""Arithmetic as a probe task (``arithmetic_probe``): the causal task ``arithmetic``'s clean prompts,
with the positions of the operands and the operator, for detectors of heads that attend to them.

The prompts keep two solved problems in front ("1+2=3\\n4+3=7\\n{a}+{b}="), so a small model sees the
format (the answers are single tokens: 0-9 for digit-splitting tokenizers such as SmolLM2's) and the
operands of the open problem are a few among many digits in the context. The causal check measures the
cross-entropy of the answer at the last token ("=").
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.tasks.arithmetic import arithmetic
from headmine.tasks.base import TokenBatch
from headmine.tasks.probe import CapturePlan, EvalBatch, Evaluation, ProbeTask
from headmine.tasks.registry import register_probe

TEMPLATE = "1{op}2=3\n4{op}3=7\n{a}{op}{b}="
"""Two solved problems, then the open one (the solved answers are for "+": the default operator)."""


def arithmetic_probe(tokenizer: Any, *, n: int = 32, seed: int = 0, op: str = "+", max_operand: int = 99,
                     template: str = TEMPLATE, prepend_bos: bool = True) -> TokenBatch:
    """Clean ``arithmetic`` prompts plus ``operand_pos`` Bool [B, T]: True on the tokens of both operands
    of the open problem and on the operator between them (meta ``a_span``/``b_span`` as in ``arithmetic``;
    ``target_id`` the answer's id, ``end_pos`` the last token)."""
    ps = arithmetic(tokenizer, n=n, seed=seed, op=op, max_operand=max_operand, template=template,
                    prepend_bos=prepend_bos)
    batch = ps.clean_batch()
    a, b = batch.meta["a_span"], batch.meta["b_span"]
    t = batch.input_ids.shape[1]
    pos = torch.arange(t)[None, :]
    first = torch.minimum(a[:, :1], b[:, :1])
    last = torch.maximum(a[:, 1:], b[:, 1:])  # exclusive: operand, operator, operand are contiguous
    meta = {**batch.meta, "operand_pos": (pos >= first) & (pos < last)}
    return TokenBatch(input_ids=batch.input_ids, attention_mask=batch.attention_mask, meta=meta, texts=batch.texts,
                      task="arithmetic_probe", params=batch.params)


def answer_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Mean cross-entropy of the answer at the last token (higher = worse)."""
    batch = arithmetic_probe(tokenizer, n=n, seed=seed, **params)
    end, target = batch.meta["end_pos"], batch.meta["target_id"]

    def measure(logits: torch.Tensor) -> float:
        rows = torch.arange(logits.shape[0], device=logits.device)
        lp = logits[rows, end.to(logits.device)].float().log_softmax(-1)
        return float(-lp[rows, target.to(logits.device)].mean())

    return EvalBatch(batch=batch, measure=measure)


PROBE = register_probe(ProbeTask(
    name="arithmetic_probe", build=arithmetic_probe, defaults={"n": 32}, plan=CapturePlan(query_rows="last"),
    evaluation=Evaluation(metric="loss_answer", build=answer_loss, inherit=("op", "max_operand", "template")),
))
