"""In-context Markov chains (ICL-MC, Edelman et al. 2024, arXiv 2402.11004): every sequence is sampled
from its own random Markov chain over a few random tokens, so the next token is predictable only from the
statistics of the context. Two probe tasks:

- ``markov_chain`` (order 1): the bigram chain of the paper; a statistical induction head attends from
  the current token to every token that followed an earlier occurrence of it (in-context bigram counts).
- ``markov_chain_order2`` (order 2): the next state depends on the last two; the (n-1)-gram context of
  an n-gram head (Akyurek et al. 2024, arXiv 2401.12973) with n = 3 is what predicts it.

Transition rows are drawn from a symmetric Dirichlet(``concentration``) prior (the paper draws from a
Dirichlet prior; a concentration below 1 makes rows peaked, so a few dozen tokens of context already
carry usable statistics). The causal check measures the next-token loss over the second half of each
sequence, where in-context statistics have been seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, bos_prefix, check_n, torch_rng
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe
from headmine.tasks.repeated_tokens import token_pool


def markov_chain(
    tokenizer: Any,
    *,
    n: int = 16,
    seed: int = 0,
    seq_len: int = 96,
    n_states: int = 6,
    order: int = 1,
    concentration: float = 0.3,
    prepend_bos: bool = True,
    exclude_common: float = 0.05,
    exclude_rare: float = 0.5,
) -> TokenBatch:
    """BOS + ``seq_len`` states of a random order-``order`` chain over ``n_states`` random tokens, per row.

    Meta: ``order`` (int), ``n_states`` (int), ``has_bos`` (bool), ``body_start`` (int: first chain
    position), ``states`` LongTensor [B, n_states] (the token of each state).
    """
    check_n(n)
    if order not in (1, 2):
        raise TaskError(f"order={order}: the chain tasks are of order 1 or 2")
    if n_states < 2 or seq_len < 4 * order:
        raise TaskError(f"n_states={n_states}, seq_len={seq_len}: need at least 2 states and {4 * order} tokens")
    if concentration <= 0:
        raise TaskError(f"concentration must be positive, got {concentration}")
    pool = token_pool(tokenizer, exclude_common=exclude_common, exclude_rare=exclude_rare)
    if len(pool) < n_states:
        raise TaskError(f"only {len(pool)} candidate tokens for {n_states} states", "lower n_states")
    g = torch_rng(seed)
    alpha = np.full(n_states, float(concentration))
    prefix = bos_prefix(tokenizer, prepend_bos)
    rows, states = [], []
    for _ in range(n):
        tokens = pool[torch.randperm(len(pool), generator=g)[:n_states]]
        # torch's Dirichlet sampler takes no generator: draw from numpy, seeded from the task's generator
        draw = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=g)))
        table = torch.from_numpy(draw.dirichlet(alpha, size=n_states**order))  # [contexts, n_states]
        seq = torch.randint(n_states, (order,), generator=g).tolist()
        while len(seq) < seq_len:
            ctx = seq[-1] if order == 1 else seq[-2] * n_states + seq[-1]
            seq.append(int(torch.multinomial(table[ctx], 1, generator=g)))
        rows.append(prefix + tokens[torch.tensor(seq)].tolist())
        states.append(tokens)
    ids = torch.tensor(rows, dtype=torch.long)
    name = "markov_chain" if order == 1 else "markov_chain_order2"
    return TokenBatch(
        input_ids=ids, attention_mask=torch.ones_like(ids),
        meta={"order": order, "n_states": n_states, "has_bos": bool(prefix), "body_start": len(prefix),
              "states": torch.stack(states)},
        texts=None, task=name,
        params={"n": n, "seed": seed, "seq_len": seq_len, "n_states": n_states, "order": order,
                "concentration": concentration, "prepend_bos": prepend_bos, "exclude_common": exclude_common,
                "exclude_rare": exclude_rare},
    )


def markov_chain_order2(tokenizer: Any, **params: Any) -> TokenBatch:
    """``markov_chain`` of order 2 (the next state depends on the last two)."""
    return markov_chain(tokenizer, **{**params, "order": 2})


def second_half_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss over the second half of each chain (after in-context statistics were seen)."""
    batch = markov_chain(tokenizer, n=n, seed=seed, **params)
    weight = torch.zeros_like(batch.input_ids)
    start = batch.meta["body_start"]
    weight[:, start + (batch.input_ids.shape[1] - start) // 2:] = 1
    return loss_on(batch, weight)


def second_half_loss_order2(tokenizer: Any, **params: Any) -> EvalBatch:
    return second_half_loss(tokenizer, **{**params, "order": 2})


PROBE = register_probe(ProbeTask(
    name="markov_chain", build=markov_chain, defaults={"n": 16},
    evaluation=Evaluation(metric="loss_markov_second_half", build=second_half_loss,
                          inherit=("seq_len", "n_states", "concentration")),
))
PROBE_ORDER2 = register_probe(ProbeTask(
    name="markov_chain_order2", build=markov_chain_order2, defaults={"n": 16, "n_states": 4, "seq_len": 128},
    evaluation=Evaluation(metric="loss_markov_second_half", build=second_half_loss_order2,
                          params={"n_states": 4, "seq_len": 128}, inherit=("seq_len", "n_states", "concentration")),
))
