"""CHG data: right-padded sequences with a loss mask, built from token ids, prompt/target strings,
task prompt sets, data files or random repeated tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headmine.core.errors import InputError, TaskError
from headmine.models.loading import LoadedModel
from headmine.tasks import load_task, next_token_dataset
from headmine.tasks.base import pad_id


@dataclass(frozen=True, kw_only=True)
class GatingData:
    """Right-padded sequences with a loss mask.

    Attributes:
        input_ids: LongTensor [N, T].
        attention_mask: LongTensor [N, T], 1 on real tokens (right padding).
        loss_mask: BoolTensor [N, T], True on tokens whose prediction is scored (never position 0,
            never padding).
        texts: the source text of each row when known.
        source: a short description (file name, task name) for the atlas.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    texts: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        ids, att, lm = self.input_ids, self.attention_mask, self.loss_mask
        if ids.ndim != 2 or ids.shape != att.shape or ids.shape != lm.shape:
            raise InputError(
                f"input_ids {tuple(ids.shape)}, attention_mask {tuple(att.shape)} and loss_mask {tuple(lm.shape)} "
                "must all be [rows, positions]",
                "build the data with prompt_target_data() / text_data()",
            )
        if ids.shape[0] == 0:
            raise InputError("the gating data set is empty", "give at least one sequence with a target")
        object.__setattr__(self, "loss_mask", (lm.bool() & att.bool()).clone())
        self.loss_mask[:, 0] = False
        n_targets = self.loss_mask.sum(1)
        if (n_targets == 0).any():
            row = int((n_targets == 0).nonzero()[0, 0])
            raise InputError(
                f"row {row} of {self.source or 'the data'} has no target token to score",
                "every row needs at least one target token after the first position",
            )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention, loss_mask) of the given rows, trimmed to their longest real length."""
        index = torch.as_tensor(index, dtype=torch.long)
        att = self.attention_mask[index]
        width = max(int(att.sum(1).max()), 2)
        return self.input_ids[index, :width], att[:, :width], self.loss_mask[index, :width]

    def subset(self, n: int) -> GatingData:
        n = min(int(n), len(self))
        texts = None if self.texts is None else self.texts[:n]
        return GatingData(
            input_ids=self.input_ids[:n], attention_mask=self.attention_mask[:n], loss_mask=self.loss_mask[:n],
            texts=texts, source=self.source,
        )


def _pad(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], pad: int) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    lm = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        att[i, : len(r)] = 1
        lm[i, : len(r)] = torch.tensor(list(m), dtype=torch.bool)
    return ids, att, lm


def token_data(
    rows: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None = None, *,
    n_ctx: int | None = None, pad: int = 0, texts: list[str] | None = None, source: str = "",
) -> GatingData:
    """GatingData from token ids: ``rows`` are prompts and ``targets`` their continuations (loss on the
    targets only), or, when ``targets`` is None, whole sequences scored on every token but the first."""
    if not rows:
        raise InputError(f"{source or 'the data'} is empty: no sequences", "give at least one prompt")
    seqs, masks = [], []
    for i, prompt in enumerate(rows):
        prompt = list(prompt)
        if targets is None:
            seq, mask = prompt, [False] + [True] * (len(prompt) - 1)
            if len(seq) < 2:
                raise InputError(f"row {i} of {source or 'the data'} is {len(seq)} token(s); need at least 2",
                                 "drop empty or one-token lines")
        else:
            tgt = list(targets[i])
            if not tgt:
                raise InputError(f"row {i} of {source or 'the data'}: the target tokenises to nothing",
                                 "give every row a non-empty target")
            if not prompt:
                raise InputError(f"row {i} of {source or 'the data'}: the prompt tokenises to nothing",
                                 "give every row a non-empty prompt")
            seq, mask = prompt + tgt, [False] * len(prompt) + [True] * len(tgt)
        if n_ctx is not None and len(seq) > n_ctx:
            raise InputError(
                f"row {i} of {source or 'the data'} is {len(seq)} tokens but the model's context is {n_ctx}",
                "shorten that row (or split plain text into shorter paragraphs)",
            )
        seqs.append(seq)
        masks.append(mask)
    ids, att, lm = _pad(seqs, masks, pad)
    return GatingData(input_ids=ids, attention_mask=att, loss_mask=lm, texts=texts, source=source)


def prompt_target_data(lm: LoadedModel, pairs: Sequence[tuple[str, str]], *, source: str = "") -> GatingData:
    """Prompt/target strings -> GatingData with the loss on the target tokens only.

    The prompt is tokenised with the tokenizer's special tokens (e.g. BOS), the target without; the
    target keeps its leading space (write ``" Paris"``, not ``"Paris"``).
    """
    tok = lm.tokenizer
    prompts = [list(tok(p, add_special_tokens=True)["input_ids"]) for p, _ in pairs]
    targets = [list(tok(t, add_special_tokens=False)["input_ids"]) for _, t in pairs]
    return token_data(prompts, targets, n_ctx=lm.geometry.n_ctx, pad=pad_id(tok),
                      texts=[p + t for p, t in pairs], source=source)


def from_token_batch(batch: Any, *, source: str | None = None) -> GatingData:
    """GatingData from a ``tasks`` TokenBatch that carries ``meta["loss_mask"]`` (``next_token_dataset``)."""
    if "loss_mask" not in batch.meta:
        raise InputError(f"batch of task {batch.task!r} has no loss_mask", "build it with tasks.next_token_dataset()")
    return GatingData(input_ids=batch.input_ids, attention_mask=batch.attention_mask, loss_mask=batch.meta["loss_mask"],
                      texts=batch.texts, source=source or batch.task)


def from_prompt_set(prompts: Any, *, n_ctx: int | None = None) -> GatingData:
    """GatingData from a ``tasks`` PromptSet: each clean prompt followed by its target tokens (loss on
    the target only)."""
    items = prompts.items
    return token_data([it.ids for it in items], [it.target_ids for it in items], n_ctx=n_ctx,
                      pad=pad_id(prompts.tokenizer), texts=[it.prompt + it.target for it in items],
                      source=prompts.task)


def load_data_file(lm: LoadedModel, path: str | Path, *, limit: int | None = None,
                   truncation: str = "error") -> GatingData:
    """A ``.jsonl`` file of ``{"prompt": ..., "target": ...}`` rows (loss on the target), or a plain text
    file (documents separated by blank lines, loss on every token), via ``tasks.next_token_dataset``.
    Sequences longer than the model's context raise InputError unless ``truncation`` is "truncate"/"chunk"."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist", "check the path")
    if not path.read_text(encoding="utf-8", errors="replace").strip():
        raise InputError(f"data file {path} is empty", "give a text file or a JSONL file with prompt/target rows")
    try:
        batch = next_token_dataset(path, lm.tokenizer, max_length=lm.geometry.n_ctx, truncation=truncation, n=limit)
    except TaskError as err:
        raise InputError(err.problem, err.hint) from err
    return from_token_batch(batch, source=path.name)


def task_data(lm: LoadedModel, task: str, *, n: int = 64, seed: int = 0, **params: Any) -> tuple[GatingData, Any]:
    """A built-in (or JSONL) causal task as GatingData (prompt + target, loss on the target), with its PromptSet."""
    prompts = load_task(task, lm.tokenizer, n=n, seed=seed, **params)
    return from_prompt_set(prompts, n_ctx=lm.geometry.n_ctx), prompts


def repeated_tokens_data(vocab: int, *, n: int = 32, length: int = 20, seed: int = 0, low: int = 0,
                         bos: int | None = None) -> GatingData:
    """Random tokens from ``[low, vocab)`` repeated once (``[bos] x x``); the loss is on the second copy
    (induction). Tokens within a copy are distinct when the range allows."""
    g = torch.Generator().manual_seed(seed)
    rows, targets = [], []
    for _ in range(n):
        if length <= vocab - low:
            x = (low + torch.randperm(vocab - low, generator=g)[:length]).tolist()
        else:
            x = torch.randint(low, vocab, (length,), generator=g).tolist()
        rows.append(([bos] if bos is not None else []) + x)
        targets.append(x)
    return token_data(rows, targets, source=f"repeated random tokens (n={n}, length={length})")
