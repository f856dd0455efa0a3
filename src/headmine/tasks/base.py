"""Token batches and the tokenisation helpers every task builder uses (prompt sets: ``prompt_set``).

No model code lives here: a task only needs a Hugging Face tokenizer (a *fast* one, because
positions are located through character offsets).

Conventions shared by every task:
- Batches are right-padded; ``attention_mask`` is 1 on real tokens.
- Per-row metadata are tensors whose first axis is the batch, or lists of length B; run-wide
  constants are plain ints/strings/tuples. ``TokenBatch.split`` relies on this.
- Positions are 0-indexed token positions in ``input_ids`` (BOS included when present);
  a span is ``(start, end)`` with ``end`` exclusive.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headmine.core.errors import TaskError

METRICS = ("logit_diff", "answer_logprob", "prob")


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True, kw_only=True)
class TokenBatch:
    """A right-padded batch of token ids with per-task metadata.

    Attributes:
        input_ids: LongTensor [B, T].
        attention_mask: LongTensor [B, T], 1 on real tokens, right padding.
        meta: per-task metadata (documented by each task builder).
        texts: the decoded or source text of each row, when there is one.
        task: the task name.
        params: the builder's parameters (what the atlas stores as the task's parameters).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    texts: list[str] | None = None
    task: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise TaskError(
                f"input_ids {tuple(self.input_ids.shape)} and attention_mask "
                f"{tuple(self.attention_mask.shape)} must both be [batch, pos]",
                "build batches with pad_batch()",
            )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """LongTensor [B]: number of real tokens per row."""
        return self.attention_mask.sum(dim=1)

    @property
    def last_positions(self) -> torch.Tensor:
        """LongTensor [B]: position of the last real token of each row (the prediction position)."""
        return self.lengths - 1

    def select(self, rows: Sequence[int] | slice) -> TokenBatch:
        """The sub-batch of the given rows (per-row metadata follow; constants are kept)."""
        b = len(self)
        idx = list(range(b))[rows] if isinstance(rows, slice) else [int(r) for r in rows]
        index = torch.tensor(idx, dtype=torch.long)

        def take(v: Any) -> Any:
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == b:
                return v.index_select(0, index)
            if isinstance(v, list) and len(v) == b:
                return [v[i] for i in idx]
            return v

        ids = self.input_ids.index_select(0, index)
        mask = self.attention_mask.index_select(0, index)
        meta = {k: take(v) for k, v in self.meta.items()}
        texts = None if self.texts is None else [self.texts[i] for i in idx]
        return TokenBatch(input_ids=ids, attention_mask=mask, meta=meta, texts=texts, task=self.task, params=self.params)

    def split(self, batch_size: int) -> Iterator[TokenBatch]:
        """Consecutive sub-batches of at most ``batch_size`` rows."""
        if batch_size < 1:
            raise TaskError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.select(slice(start, start + batch_size))

    def to(self, device: torch.device | str) -> TokenBatch:
        meta = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.meta.items()}
        return TokenBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            meta=meta,
            texts=self.texts,
            task=self.task,
            params=self.params,
        )


def pad_id(tokenizer: Any) -> int:
    """The id used for right padding: pad, else eos, else 0 (masked out anyway)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def bos_id(tokenizer: Any) -> int | None:
    """The beginning-of-sequence id: bos, else eos (GPT-2 convention), else None."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def pad_batch(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists of ids into (input_ids, attention_mask), both LongTensor [B, T]."""
    if not rows:
        raise TaskError("cannot build an empty batch", "ask for n >= 1 prompts")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def pad_rows(rows: Sequence[Sequence[Any]], width: int, fill: Any, dtype: torch.dtype) -> torch.Tensor:
    """Right-pad per-position metadata rows to ``width`` with ``fill``."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.tensor(list(r), dtype=dtype)
    return out


def collate_meta(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-item metadata: ints -> LongTensor [B], bools -> BoolTensor [B], equal-length int
    tuples -> LongTensor [B, k]; anything else stays a list of length B."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for m in metas:
        keys.extend(k for k in m if k not in keys)
    for k in keys:
        vals = [m.get(k) for m in metas]
        if all(isinstance(v, bool) for v in vals):
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            out[k] = torch.tensor(vals, dtype=torch.long)
        elif (
            all(isinstance(v, (tuple, list)) for v in vals)
            and len({len(v) for v in vals}) == 1
            and all(isinstance(x, int) and not isinstance(x, bool) for v in vals for x in v)
        ):
            out[k] = torch.tensor([list(v) for v in vals], dtype=torch.long).reshape(len(vals), -1)
        else:
            out[k] = vals
    return out


# --------------------------------------------------------------------------- tokenisation helpers
def _encode_plain(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def single_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` if it is exactly one token (no special tokens added), else TaskError.

    Leading spaces matter: ``" Paris"`` (the form that follows another word) and ``"Paris"`` are
    different tokens in BPE vocabularies.
    """
    ids = _encode_plain(tokenizer, text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise TaskError(
            f"{text!r} is {len(ids)} tokens in this tokenizer ({pieces}), not one",
            "use a word that is a single token here (mind the leading space, e.g. ' Paris'), "
            "or allow multi-token targets where the task supports them",
        )
    if ids[0] == getattr(tokenizer, "unk_token_id", None) and text.strip() != getattr(tokenizer, "unk_token", None):
        raise TaskError(
            f"{text!r} is not in this tokenizer's vocabulary (it maps to the unknown token)",
            "use words the model's vocabulary contains; toy vocabularies cannot run natural-language tasks",
        )
    return int(ids[0])


def is_single_token(tokenizer: Any, text: str) -> bool:
    ids = _encode_plain(tokenizer, text, add_special_tokens=False)
    return len(ids) == 1 and ids[0] != getattr(tokenizer, "unk_token_id", None)


def encode(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` (the tokenizer's own special tokens, e.g. Llama's BOS, by default)."""
    return _encode_plain(tokenizer, text, add_special_tokens)


Part = str | tuple[str, str]


def encode_marked(
    tokenizer: Any, parts: Sequence[Part], *, add_special_tokens: bool = True
) -> tuple[str, list[int], dict[str, tuple[int, int]]]:
    """Tokenise the concatenation of ``parts`` and locate the labelled ones.

    ``parts`` are plain strings or ``(label, text)`` pairs. Returns ``(text, ids, spans)`` where
    ``spans[label] = (start, end)`` are the token positions (end exclusive) of the tokens that
    overlap that part's characters. The text is tokenised as a whole, so the ids are exactly what
    the tokenizer produces for the full prompt.
    """
    text, marks, cursor = "", {}, 0
    for part in parts:
        label, piece = (None, part) if isinstance(part, str) else part
        if label is not None:
            if label in marks:
                raise TaskError(f"label {label!r} is used twice in one prompt")
            marks[label] = (cursor, cursor + len(piece))
        text += piece
        cursor += len(piece)
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as err:
        raise TaskError(
            f"this tokenizer ({type(tokenizer).__name__}) cannot report character offsets",
            "use a fast (Rust-backed) Hugging Face tokenizer: AutoTokenizer.from_pretrained(..., use_fast=True)",
        ) from err
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans: dict[str, tuple[int, int]] = {}
    for label, (cs, ce) in marks.items():
        hit = [t for t, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
        if not hit:
            raise TaskError(f"part {label!r} of the prompt {text!r} maps to no token")
        spans[label] = (hit[0], hit[-1] + 1)
    return text, ids, spans


def special_ids(tokenizer: Any) -> set[int]:
    """Special and added-token ids (control tokens that random-token tasks must avoid)."""
    out = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out.update(int(i) for i in decoder)
    return out


# --------------------------------------------------------------------------- builder helpers
def rng(seed: int) -> random.Random:
    return random.Random(int(seed))


def torch_rng(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def check_n(n: int) -> None:
    if int(n) < 1:
        raise TaskError(f"n must be >= 1, got {n}", "ask for at least one prompt")


def check_metric(metric: str) -> str:
    """``metric`` if it is one of ``METRICS``, else TaskError."""
    if metric not in METRICS:
        raise TaskError(f"unknown metric {metric!r}", f"use one of {METRICS}")
    return metric


def bos_prefix(tokenizer: Any, prepend_bos: bool) -> list[int]:
    """``[bos]`` (bos, else eos) when ``prepend_bos``, else ``[]``; TaskError when the tokenizer has neither."""
    if not prepend_bos:
        return []
    b = bos_id(tokenizer)
    if b is None:
        raise TaskError(
            "prepend_bos=True but the tokenizer has neither a BOS nor an EOS token",
            "pass prepend_bos=False",
        )
    return [b]


def encode_prompt(
    tokenizer: Any, parts: Sequence[Part], *, prepend_bos: bool = False
) -> tuple[str, list[int], dict[str, tuple[int, int]]]:
    """``encode_marked`` with the tokenizer's own special tokens, plus a BOS (bos, else eos) in
    front when ``prepend_bos`` and the tokenizer did not add one; spans are shifted to match."""
    text, ids, spans = encode_marked(tokenizer, parts, add_special_tokens=True)
    b = bos_id(tokenizer)
    if prepend_bos and b is not None and (not ids or ids[0] != b):
        ids = [b, *ids]
        spans = {k: (s + 1, e + 1) for k, (s, e) in spans.items()}
    return text, ids, spans
