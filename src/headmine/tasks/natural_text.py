"""Natural text: windows of the embedded English corpus (previous-token, duplicate-token, sinks).

The causal check measures the next-token loss on every real token that has context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, bos_prefix, check_n, pad_batch, pad_id, rng
from headmine.tasks.corpus import corpus_text
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe


def previous_occurrence(ids: list[int], start: int = 0) -> list[int]:
    """For each position, the most recent earlier position (>= start) holding the same id, else -1."""
    last: dict[int, int] = {}
    out = []
    for t, tok in enumerate(ids):
        out.append(last.get(tok, -1) if t >= start else -1)
        if t >= start:
            last[tok] = t
    return out


def natural_text(
    tokenizer: Any,
    *,
    n: int = 16,
    seed: int = 0,
    seq_len: int = 64,
    prepend_bos: bool = True,
    text: str | None = None,
    path: str | Path | None = None,
) -> TokenBatch:
    """Non-overlapping windows of ``seq_len`` tokens from the embedded corpus (or ``text``/``path``),
    chosen by ``seed``; BOS prepended by default (rows are then seq_len + 1 long).

    Meta: ``has_bos`` (bool), ``prev_occurrence`` LongTensor [B, T] (most recent earlier position
    with the same token, -1 if none; BOS never counts), ``duplicate_mask`` BoolTensor [B, T]
    (prev_occurrence >= 0: the duplicate-token template), ``window_start`` [B] (token offset of the
    window in the tokenised source).
    """
    check_n(n)
    if text is not None and path is not None:
        raise TaskError("give text or path, not both")
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise TaskError(f"cannot read {path}: {err}", "check the path") from err
    source = corpus_text() if text is None else text
    ids = list(tokenizer(source, add_special_tokens=False)["input_ids"])
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids and sum(i == unk for i in ids) > len(ids) // 2:
        raise TaskError(
            "most of the English corpus maps to the unknown token in this tokenizer",
            "natural-text probes need a natural-language vocabulary; toy vocabularies cannot run them",
        )
    n_windows = len(ids) // seq_len
    if n > n_windows:
        raise TaskError(
            f"the text has {len(ids)} tokens: only {n_windows} windows of {seq_len}, {n} asked",
            "lower n or seq_len, or pass a longer text",
        )
    starts = sorted(w * seq_len for w in rng(seed).sample(range(n_windows), n))
    prefix = bos_prefix(tokenizer, prepend_bos)
    rows = [prefix + ids[s : s + seq_len] for s in starts]
    prev = [previous_occurrence(r, start=len(prefix)) for r in rows]
    input_ids, mask = pad_batch(rows, pad_id(tokenizer))
    prev_t = torch.tensor(prev, dtype=torch.long)
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=mask,
        meta={
            "has_bos": bool(prefix),
            "prev_occurrence": prev_t,
            "duplicate_mask": prev_t >= 0,
            "window_start": torch.tensor(starts, dtype=torch.long),
        },
        texts=[tokenizer.decode(r[len(prefix):]) for r in rows],
        task="natural_text",
        params={"n": n, "seed": seed, "seq_len": seq_len, "prepend_bos": prepend_bos,
                "source": "corpus" if text is None and path is None else str(path or "text")},
    )


def text_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on every real token after the first (which has no context)."""
    batch = natural_text(tokenizer, n=n, seed=seed, **params)
    weight = batch.attention_mask.clone()
    if batch.meta.get("has_bos"):
        weight[:, :2] = 0  # first real token has no context
    return loss_on(batch, weight)


PROBE = register_probe(ProbeTask(
    name="natural_text", build=natural_text, defaults={"n": 16, "seq_len": 64},
    evaluation=Evaluation(metric="loss_text", build=text_loss, params={"seq_len": 64}, inherit=("seq_len",)),
))
