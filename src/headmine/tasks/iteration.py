"""Iteration tasks (Cabannes et al. 2024, "Iteration Head: A Mechanistic Study of Chain-of-Thought",
arXiv 2406.02128; spec: shared/methods/CIRCUITS_AND_KV.md §5.1): a sequence x_1 ... x_L, a separator
(the paper's end-of-input token EoI), then the chain of thought s_1 ... s_L with s_t = F(s_{t-1}, x_t).

Rules: ``copy`` (s_t = x_t, the paper's binary copy task; the default) and ``parity`` (s_t = x_1 + ... +
x_t mod 2, its parity task). SmolLM2-135M does the copy task in context (2-way accuracy 0.70 on the
chain-of-thought tokens, 16 rows of 4 shots of 8 bits) but not parity (0.53, chance), and a causal check
needs a task the model does. A pretrained model has to infer the rule in context, so each row holds ``n_shots``
examples, one a line; every example is L bits, then the separator, then its L steps.

The iteration head at the position holding s_{t-1} (the separator plays s_0) attends to x_t, the input
the next step needs: meta ``iteration_target`` [B, T] is that key position for every such query (-1
elsewhere). The causal check measures the next-token loss on the chain-of-thought tokens of every
example after the first (the first has no example before it to learn the rule from).
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, bos_prefix, check_n, is_single_token, single_token_id, torch_rng
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe

RULES = ("parity", "copy")


def _first_single(tokenizer: Any, forms: tuple[str, ...]) -> int:
    for form in forms:
        if is_single_token(tokenizer, form):
            return single_token_id(tokenizer, form)
    raise TaskError(f"none of {forms!r} is a single token in this tokenizer", "use a tokenizer with single-token digits")


def iteration(
    tokenizer: Any,
    *,
    n: int = 16,
    seed: int = 0,
    length: int = 8,
    n_shots: int = 4,
    rule: str = "copy",
    prepend_bos: bool = True,
) -> TokenBatch:
    """BOS + ``n_shots`` lines "x_1 .. x_L = s_1 .. s_L" of random bits, tokens built one per symbol.

    Meta: ``iteration_target`` LongTensor [B, T] (key position of x_t for the query holding s_{t-1},
    -1 elsewhere), ``cot_mask`` LongTensor [B, T] (1 on chain-of-thought tokens of shots 2..n),
    ``length``, ``n_shots`` (ints), ``rule`` (str).
    """
    check_n(n)
    if rule not in RULES:
        raise TaskError(f"unknown iteration rule {rule!r}", f"use one of {RULES}")
    if length < 2 or n_shots < 1:
        raise TaskError(f"length={length}, n_shots={n_shots}: need length >= 2 and n_shots >= 1")
    bit = [_first_single(tokenizer, (" 0", "0")), _first_single(tokenizer, (" 1", "1"))]
    sep = _first_single(tokenizer, (" =", "=", ":"))
    newline = _first_single(tokenizer, ("\n", ".", ","))
    g = torch_rng(seed)
    prefix = bos_prefix(tokenizer, prepend_bos)
    rows, targets, cot = [], [], []
    for _ in range(n):
        ids, tgt, mask = list(prefix), [-1] * len(prefix), [0] * len(prefix)
        for shot in range(n_shots):
            x = torch.randint(2, (length,), generator=g).tolist()
            s = x if rule == "copy" else torch.tensor(x).cumsum(0).remainder(2).tolist()
            x_pos = [len(ids) + k for k in range(length)]
            ids += [bit[v] for v in x]
            tgt += [-1] * length
            mask += [0] * length
            ids.append(sep)
            tgt.append(x_pos[0])  # the separator (s_0) looks up x_1
            mask.append(0)
            for t in range(length):
                ids.append(bit[s[t]])
                tgt.append(x_pos[t + 1] if t + 1 < length else -1)
                mask.append(1 if shot > 0 else 0)
            ids.append(newline)
            tgt.append(-1)
            mask.append(0)
        rows.append(ids)
        targets.append(tgt)
        cot.append(mask)
    ids_t = torch.tensor(rows, dtype=torch.long)
    return TokenBatch(
        input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
        meta={"iteration_target": torch.tensor(targets, dtype=torch.long),
              "cot_mask": torch.tensor(cot, dtype=torch.long), "length": length, "n_shots": n_shots, "rule": rule},
        texts=None, task="iteration",
        params={"n": n, "seed": seed, "length": length, "n_shots": n_shots, "rule": rule, "prepend_bos": prepend_bos},
    )


def cot_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on the chain-of-thought tokens of every shot after the first."""
    batch = iteration(tokenizer, n=n, seed=seed, **params)
    return loss_on(batch, batch.meta["cot_mask"])


PROBE = register_probe(ProbeTask(
    name="iteration", build=iteration, defaults={"n": 16},
    evaluation=Evaluation(metric="loss_cot", build=cot_loss, inherit=("length", "n_shots", "rule")),
))
