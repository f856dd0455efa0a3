"""In-context repetition (causal task ``induction``): BOS + r + r[:m] -> r[m], corrupted by fresh
tokens in the second copy."""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import bos_prefix, check_n, torch_rng
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import TASKS
from headmine.tasks.repeated_tokens import token_pool


@TASKS.register("induction")
def induction(
    tokenizer: Any,
    *,
    n: int = 32,
    seed: int = 0,
    seq_len: int = 20,
    prefix_len: int | None = None,
    prepend_bos: bool = True,
    exclude_common: float = 0.0,
    exclude_rare: float = 0.0,
) -> PromptSet:
    """BOS + r + r[:m] -> r[m] (r = ``seq_len`` distinct random tokens, m = ``prefix_len``, default
    seq_len // 2). Corrupted = BOS + r + r'[:m] with r' fresh random tokens (not in r): the answer
    is then not predictable by induction. Metric answer_logprob.

    Meta: ``source_pos`` [B] (position of r[m] in the first copy: where an induction head at the
    last position should attend), ``prev_copy_pos`` [B] (position of r[m-1] in the first copy).
    """
    check_n(n)
    m = seq_len // 2 if prefix_len is None else prefix_len
    if not 1 <= m < seq_len:
        raise TaskError(f"prefix_len={m} must be in [1, seq_len)", "use 1 <= prefix_len < seq_len")
    pool = token_pool(tokenizer, exclude_common=exclude_common, exclude_rare=exclude_rare)
    if len(pool) < 2 * seq_len:
        raise TaskError(f"only {len(pool)} candidate tokens", "lower seq_len")
    g = torch_rng(seed)
    prefix = bos_prefix(tokenizer, prepend_bos)
    off = len(prefix)
    items = []
    for _ in range(n):
        perm = pool[torch.randperm(len(pool), generator=g)[: 2 * seq_len]].tolist()
        rr, r2 = perm[:seq_len], perm[seq_len:]
        ids = prefix + rr + rr[:m]
        cids = prefix + rr + r2[:m]
        meta = {"source_pos": off + m, "prev_copy_pos": off + m - 1}
        items.append(PromptItem(
            prompt=tokenizer.decode(ids), target=tokenizer.decode([rr[m]]), target_ids=(rr[m],), ids=tuple(ids),
            corrupted_prompt=tokenizer.decode(cids), corrupted_ids=tuple(cids), meta=meta,
        ))
    return PromptSet(task="induction", items=tuple(items), metric="answer_logprob", tokenizer=tokenizer,
                     equal_lengths=True, params={"n": n, "seed": seed, "seq_len": seq_len, "prefix_len": m,
                                                 "prepend_bos": prepend_bos, "exclude_common": exclude_common,
                                                 "exclude_rare": exclude_rare, "corruption": "fresh_tokens"})
