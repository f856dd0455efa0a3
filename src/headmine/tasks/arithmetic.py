"""Arithmetic (causal task ``arithmetic``): two-operand problems with single-token answers,
corrupted by other operands."""

from __future__ import annotations

from typing import Any

from headmine.core.errors import TaskError
from headmine.tasks.base import check_metric, check_n, encode_prompt, is_single_token, rng, single_token_id
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import TASKS

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@TASKS.register("arithmetic")
def arithmetic(
    tokenizer: Any,
    *,
    n: int = 64,
    seed: int = 0,
    op: str = "+",
    max_operand: int = 99,
    template: str = "{a}{op}{b}=",
    prepend_bos: bool = False,
    metric: str = "logit_diff",
) -> PromptSet:
    """Two-operand problems "12+7=" -> "19", restricted to answers that are one token in this
    tokenizer (digit-splitting tokenizers such as SmolLM2's allow only 0..9). Corrupted = other
    operands with a different answer and the same token length; ``wrong_target`` is the corrupted
    answer (metric logit_diff = clean answer - corrupted answer).

    Meta: ``a``, ``b``, ``answer`` [B] (ints), ``a_span``, ``b_span`` [B, 2].
    """
    check_n(n)
    check_metric(metric)
    if op not in _OPS:
        raise TaskError(f"unknown operator {op!r}", f"use one of {sorted(_OPS)}")
    if "{a}" not in template or "{b}" not in template:
        raise TaskError(f"arithmetic template {template!r} needs {{a}} and {{b}}")
    single = {}
    cands = []
    for a in range(max_operand + 1):
        for b in range(max_operand + 1):
            c = _OPS[op](a, b)
            if c < 0:
                continue
            if c not in single:
                single[c] = is_single_token(tokenizer, str(c))
            if single[c]:
                cands.append((a, b, c))
    if len({c for _, _, c in cands}) < 2:
        raise TaskError(f"fewer than two single-token answers for {op} with operands <= {max_operand}",
                        "raise max_operand or use another operator")

    def parts(a: int, b: int) -> list[Any]:
        ia, ib = template.index("{a}"), template.index("{b}")
        rest = template.replace("{op}", op)
        first, second = (("a", a), ("b", b)) if ia < ib else (("b", b), ("a", a))
        h, rest = rest.split("{" + first[0] + "}", 1)
        m, t = rest.split("{" + second[0] + "}", 1)
        return [h, (first[0], str(first[1])), m, (second[0], str(second[1])), t]

    r = rng(seed)
    items = []
    tries = 0
    while len(items) < n:
        tries += 1
        if tries > 100 * n:
            raise TaskError("could not find equal-length corruptions for arithmetic prompts", "change max_operand")
        a, b, c = r.choice(cands)
        text, ids, spans = encode_prompt(tokenizer, parts(a, b), prepend_bos=prepend_bos)
        for _ in range(50):
            a2, b2, c2 = r.choice(cands)
            if c2 == c:
                continue
            ctext, cids, cspans = encode_prompt(tokenizer, parts(a2, b2), prepend_bos=prepend_bos)
            if len(cids) == len(ids):
                break
        else:
            continue
        items.append(PromptItem(
            prompt=text, target=str(c), target_ids=(single_token_id(tokenizer, str(c)),), ids=tuple(ids),
            corrupted_prompt=ctext, corrupted_ids=tuple(cids), wrong_target=str(c2),
            wrong_id=single_token_id(tokenizer, str(c2)),
            meta={"a": a, "b": b, "answer": c, "a_span": spans["a"], "b_span": spans["b"]},
            corrupted_meta={"a": a2, "b": b2, "answer": c2, "a_span": cspans["a"], "b_span": cspans["b"]},
        ))
    return PromptSet(task="arithmetic", items=tuple(items), metric=metric, tokenizer=tokenizer, equal_lengths=True,
                     params={"n": n, "seed": seed, "op": op, "max_operand": max_operand, "template": template,
                             "prepend_bos": prepend_bos, "n_candidates": len(cands), "corruption": "operands"})
