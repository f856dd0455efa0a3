"""Contrastive prompt sets: what a causal task returns (clean and corrupted prompts, answers and a
metric), turned into padded ``TokenBatch`` objects with the answers in their metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import METRICS, TokenBatch, collate_meta, pad_batch, pad_id


@dataclass(frozen=True, kw_only=True)
class PromptItem:
    """One prompt of a causal task.

    Attributes:
        prompt: the clean prompt text (for id-built tasks: the decoded ids).
        target: the answer string (the continuation, leading space included where the tokenizer needs it).
        target_ids: the answer's token ids (one id for single-token tasks).
        ids: the clean prompt's token ids, as fed to the model.
        corrupted_prompt / corrupted_ids: the corrupted variant, if the task has one.
        wrong_target / wrong_id: the competing answer for logit differences (e.g. S in IOI).
        meta: per-item metadata for the clean prompt (positions refer to ``ids``).
        corrupted_meta: per-item metadata for the corrupted prompt (defaults to ``meta`` when the
            task promises equal lengths).
    """

    prompt: str
    target: str
    target_ids: tuple[int, ...]
    ids: tuple[int, ...]
    corrupted_prompt: str | None = None
    corrupted_ids: tuple[int, ...] | None = None
    wrong_target: str | None = None
    wrong_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    corrupted_meta: dict[str, Any] | None = None

    @property
    def target_id(self) -> int:
        """The single answer id (TaskError when the target is several tokens)."""
        if len(self.target_ids) != 1:
            raise TaskError(f"target {self.target!r} is {len(self.target_ids)} tokens, not one")
        return self.target_ids[0]


@dataclass(frozen=True, kw_only=True)
class PromptSet:
    """A causal-task dataset: clean prompts, optional corrupted prompts, answers and a metric.

    ``metric`` is "logit_diff" (logit(target) - logit(wrong) at the last prompt token),
    "answer_logprob" or "prob" (of the target there). ``equal_lengths`` promises that every
    corrupted prompt has as many tokens as its clean prompt (so positions line up for patching).

    Batch metadata (both batches): ``target_id`` [B] (when every target is one token),
    ``target_ids`` list of tuples, ``wrong_id`` [B] (when every item has one), ``end_pos`` [B]
    (last prompt token = where the answer is predicted), plus the task's per-item keys.
    """

    task: str
    items: tuple[PromptItem, ...]
    metric: str
    tokenizer: Any = field(repr=False, compare=False)
    equal_lengths: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise TaskError(f"unknown metric {self.metric!r}", f"use one of {METRICS}")
        if not self.items:
            raise TaskError(f"task {self.task!r} has no prompts", "ask for n >= 1 or check the input file")
        if self.metric == "logit_diff":
            missing = [i for i, it in enumerate(self.items) if it.wrong_id is None]
            if missing:
                raise TaskError(
                    f"metric logit_diff needs a wrong answer for every item; item {missing[0]} has none",
                    "give each item a wrong_target, or use metric answer_logprob",
                )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_corrupted(self) -> bool:
        return all(it.corrupted_ids is not None for it in self.items)

    def _answers_meta(self, rows: Sequence[Sequence[int]]) -> dict[str, Any]:
        meta: dict[str, Any] = {"target_ids": [it.target_ids for it in self.items]}
        if all(len(it.target_ids) == 1 for it in self.items):
            meta["target_id"] = torch.tensor([it.target_ids[0] for it in self.items], dtype=torch.long)
        if all(it.wrong_id is not None for it in self.items):
            meta["wrong_id"] = torch.tensor([it.wrong_id for it in self.items], dtype=torch.long)
        meta["end_pos"] = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)
        return meta

    def clean_batch(self) -> TokenBatch:
        rows = [it.ids for it in self.items]
        ids, mask = pad_batch(rows, pad_id(self.tokenizer))
        meta = collate_meta([it.meta for it in self.items])
        meta.update(self._answers_meta(rows))
        return TokenBatch(
            input_ids=ids,
            attention_mask=mask,
            meta=meta,
            texts=[it.prompt for it in self.items],
            task=self.task,
            params={**self.params, "variant": "clean"},
        )

    def check_lengths(self) -> None:
        """TaskError naming the first item whose corrupted prompt differs in token length."""
        for i, it in enumerate(self.items):
            if it.corrupted_ids is not None and len(it.corrupted_ids) != len(it.ids):
                raise TaskError(
                    f"task {self.task!r} item {i}: clean prompt is {len(it.ids)} tokens but the corrupted "
                    f"prompt is {len(it.corrupted_ids)} ({it.prompt!r} vs {it.corrupted_prompt!r})",
                    "make both prompts tokenise to the same length (same template, single-token swaps)",
                )

    def corrupted_batch(self) -> TokenBatch:
        missing = [i for i, it in enumerate(self.items) if it.corrupted_ids is None]
        if missing:
            raise TaskError(
                f"task {self.task!r} item {missing[0]} has no corrupted prompt",
                "add corrupted_prompt to every item, or use a method that needs no corruption",
            )
        if self.equal_lengths:
            self.check_lengths()
        rows = [it.corrupted_ids for it in self.items]
        ids, mask = pad_batch(rows, pad_id(self.tokenizer))  # type: ignore[arg-type]
        metas = [it.corrupted_meta if it.corrupted_meta is not None else
                 (it.meta if self.equal_lengths else {}) for it in self.items]
        meta = collate_meta(metas)
        meta.update(self._answers_meta(rows))  # type: ignore[arg-type]
        return TokenBatch(
            input_ids=ids,
            attention_mask=mask,
            meta=meta,
            texts=[it.corrupted_prompt or "" for it in self.items],
            task=self.task,
            params={**self.params, "variant": "corrupted"},
        )
