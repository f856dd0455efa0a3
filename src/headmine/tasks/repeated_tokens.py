"""Repeated random tokens: BOS + r + r (+ r ...), r random tokens (induction, previous-token, sinks).

The causal check measures the next-token loss on the second copy (after its first token): heads
that copy from the previous occurrence are what make that loss low.
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, bos_prefix, check_n, special_ids, torch_rng
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe


def token_pool(tokenizer: Any, *, exclude_common: float = 0.0, exclude_rare: float = 0.0) -> torch.Tensor:
    """Ids that random-token tasks may draw: all ids except special/added tokens, minus the first
    ``exclude_common`` and last ``exclude_rare`` fractions of the id range (BPE ids are ordered by
    merge rank, a proxy for frequency: low ids are common, high ids rare)."""
    if not (0 <= exclude_common < 1 and 0 <= exclude_rare < 1 and exclude_common + exclude_rare < 1):
        raise TaskError(
            f"exclude_common={exclude_common}, exclude_rare={exclude_rare} leave no tokens",
            "use fractions in [0, 1) whose sum is below 1",
        )
    specials = special_ids(tokenizer)
    ids = [i for i in range(len(tokenizer)) if i not in specials]
    lo = int(len(ids) * exclude_common)
    hi = len(ids) - int(len(ids) * exclude_rare)
    return torch.tensor(ids[lo:hi], dtype=torch.long)


def repeated_tokens(
    tokenizer: Any,
    *,
    n: int = 10,
    seed: int = 0,
    seq_len: int = 50,
    n_repeats: int = 2,
    prepend_bos: bool = True,
    exclude_common: float = 0.0,
    exclude_rare: float = 0.0,
    unique: bool = True,
) -> TokenBatch:
    """BOS + r repeated ``n_repeats`` times; r = ``seq_len`` random tokens (ARENA: 50 tokens x 10 rows;
    Olsson prefix matching: 25 tokens x 4 repeats, excluding common and rare tokens).

    Meta: ``seq_len`` (int), ``n_repeats`` (int), ``has_bos`` (bool), ``block_starts`` (tuple: start
    position of each copy), ``first_repeat_positions`` (tuple: positions of the second copy, where
    induction can first fire), ``induction_offset`` (int, seq_len - 1: an induction head at query i
    attends to key i - induction_offset), ``source_positions`` LongTensor [B, T] (position of the
    same token in the previous copy, -1 in the first copy and on BOS), ``random_tokens`` [B, seq_len].
    """
    check_n(n)
    if seq_len < 2 or n_repeats < 2:
        raise TaskError(f"seq_len={seq_len}, n_repeats={n_repeats}: need seq_len >= 2 and n_repeats >= 2")
    pool = token_pool(tokenizer, exclude_common=exclude_common, exclude_rare=exclude_rare)
    if unique and len(pool) < seq_len:
        raise TaskError(f"only {len(pool)} candidate tokens for {seq_len} distinct ones", "lower seq_len")
    g = torch_rng(seed)
    if unique:
        r = torch.stack([pool[torch.randperm(len(pool), generator=g)[:seq_len]] for _ in range(n)])
    else:
        r = pool[torch.randint(len(pool), (n, seq_len), generator=g)]
    prefix = bos_prefix(tokenizer, prepend_bos)
    off = len(prefix)
    body = r.repeat(1, n_repeats)
    ids = torch.cat([torch.tensor([prefix] * n, dtype=torch.long).reshape(n, off), body], dim=1)
    total = ids.shape[1]
    src = torch.full((n, total), -1, dtype=torch.long)
    src[:, off + seq_len :] = torch.arange(off, total - seq_len)
    block_starts = tuple(off + k * seq_len for k in range(n_repeats))
    params = {
        "n": n, "seed": seed, "seq_len": seq_len, "n_repeats": n_repeats, "prepend_bos": prepend_bos,
        "exclude_common": exclude_common, "exclude_rare": exclude_rare, "unique": unique,
    }
    return TokenBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        meta={
            "seq_len": seq_len,
            "n_repeats": n_repeats,
            "has_bos": bool(off),
            "block_starts": block_starts,
            "first_repeat_positions": tuple(range(off + seq_len, off + 2 * seq_len)),
            "induction_offset": seq_len - 1,
            "source_positions": src,
            "random_tokens": r,
        },
        texts=None,
        task="repeated_tokens",
        params=params,
    )


def second_repeat_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on the second copy, its first token left out (nothing predicts it)."""
    batch = repeated_tokens(tokenizer, n=n, seed=seed, **params)
    weight = torch.zeros_like(batch.input_ids)
    weight[:, list(batch.meta["first_repeat_positions"])[1:]] = 1
    return loss_on(batch, weight)


PROBE = register_probe(ProbeTask(
    name="repeated_tokens", build=repeated_tokens, defaults={"n": 16, "seq_len": 50},
    evaluation=Evaluation(metric="loss_second_repeat", build=second_repeat_loss, params={"seq_len": 40},
                          inherit=("seq_len",)),
))
