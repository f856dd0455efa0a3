"""Isolated-token probes: each token alone (after BOS when the tokenizer has one), for OV/QK
weight scores that read the effective embeddings after the first block.

- ``ordinal_tokens``: the tokens of the ordinal sets (successor heads);
- ``ioi_names``: the single-token IOI names (name-copy and negative name-copy scores);
- ``text_tokens``: the distinct tokens of natural-text windows (copy suppression).

Their capture plan keeps only the first block's output at the last row, and their rows are one or
two tokens long, so the scan runs them in one wide batch.
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, bos_id, pad_batch, pad_id, single_token_id
from headmine.tasks.ioi import ioi_names
from headmine.tasks.natural_text import natural_text
from headmine.tasks.ordinal import ordinal_token_sets
from headmine.tasks.probe import CapturePlan, ProbeTask
from headmine.tasks.registry import register_probe

#: the first block's output at the token itself, in wide batches
ISOLATED_PLAN = CapturePlan(query_rows="last", layers="first_output", wide=True)


def isolated_tokens(tokenizer: Any, token_ids: list[int], task: str, meta: dict[str, Any] | None = None) -> TokenBatch:
    """One row per token: ``[bos, token]`` (``[token]`` without a BOS/EOS id).

    Meta: ``token_ids`` LongTensor [B] (the token of each row), plus ``meta``.
    """
    if not token_ids:
        raise TaskError(f"probe {task!r} has no tokens", "check the tokenizer")
    b = bos_id(tokenizer)
    pre = [] if b is None else [b]
    ids, mask = pad_batch([[*pre, t] for t in token_ids], pad_id(tokenizer))
    return TokenBatch(input_ids=ids, attention_mask=mask, task=task,
                      meta={"token_ids": torch.tensor(token_ids, dtype=torch.long), **(meta or {})},
                      params={"n_tokens": len(token_ids)})


def ordinal_tokens(tokenizer: Any, *, seed: int = 0, **sets: Any) -> TokenBatch:
    """Every token of the single-token ordinal sets (``sets`` go to ``ordinal_token_sets``), sorted.

    Meta: ``ordinal_sets`` (list of ordered id lists), ``set_names``.
    """
    chosen = ordinal_token_sets(tokenizer, **sets)
    uniq = sorted({t for s in chosen.values() for t in s})
    return isolated_tokens(tokenizer, uniq, "ordinal_tokens",
                           {"ordinal_sets": [list(s) for s in chosen.values()], "set_names": list(chosen)})


def ioi_name_tokens(tokenizer: Any, *, seed: int = 0) -> TokenBatch:
    """The IOI names that are one token with a leading space (" Mary"), sorted by id."""
    names = ioi_names(tokenizer)
    if len(names) < 5:
        raise TaskError(
            f"only {len(names)} IOI names are a single token (with a leading space) in this tokenizer",
            "name movers need single-token names; drop name_copy/negative_name_copy/name_mover for this model",
        )
    return isolated_tokens(tokenizer, sorted({single_token_id(tokenizer, " " + n) for n in names}), "ioi_names")


def text_tokens(tokenizer: Any, *, seed: int = 0, max_tokens: int = 400, n: int = 16, seq_len: int = 64) -> TokenBatch:
    """The first ``max_tokens`` distinct non-special tokens of ``n`` natural-text windows of ``seq_len``
    tokens (drawn with ``seed``), sorted by id."""
    text = natural_text(tokenizer, n=n, seed=seed, seq_len=seq_len)
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    seen: list[int] = []
    for t in text.input_ids[text.attention_mask.bool()].tolist():
        if t not in specials and t not in seen:
            seen.append(t)
    return isolated_tokens(tokenizer, sorted(seen[: int(max_tokens)]), "text_tokens")


ORDINAL_TOKENS = register_probe(ProbeTask(name="ordinal_tokens", build=ordinal_tokens, plan=ISOLATED_PLAN))
IOI_NAME_TOKENS = register_probe(ProbeTask(name="ioi_names", build=ioi_name_tokens, plan=ISOLATED_PLAN))
TEXT_TOKENS = register_probe(ProbeTask(name="text_tokens", build=text_tokens, defaults={"max_tokens": 400},
                                       plan=ISOLATED_PLAN))
