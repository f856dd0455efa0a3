"""Ordinal sequences (" Monday, Tuesday, ...") as single tokens, the ``ordinal`` probe (runs of
consecutive items) and the token sets for successor scoring.

Items are comma separated (" Monday, Tuesday, Wednesday,"; bare digits "1,2,3,"): a run of words
without commas is rare in text, and SmolLM2 then predicts punctuation, not the next item (7.7 nats
on the old space-separated prompts against 0.9 with commas, 5 items shown). The causal check
measures the next-token loss on the last item of each run only, the answer once ``length - 1``
items are shown: the second item of a run is not predictable from the first alone.

A word counts as a single token only when it is one known token: not the unknown token (a toy
word-level vocabulary maps every English word to ``<unk>``, which once made every prompt
``[bos, unk, unk, ...]``), not a special token, and not an id an earlier item of the set already has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import (
    TokenBatch,
    bos_prefix,
    check_n,
    encode_marked,
    pad_batch,
    pad_id,
    rng,
    special_ids,
)
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe

ORDINAL_SEQUENCES: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(i) for i in range(1, 201)),
    "number_words": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                     "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                     "eighteen", "nineteen", "twenty"),
    "ordinal_words": ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                      "ninth", "tenth"),
    "days": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "months": ("January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December"),
    "letters": tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}


@dataclass(frozen=True)
class OrdinalSet:
    """An ordinal sequence as single tokens in one tokenizer.

    ``words`` are the token strings (" Monday" in the "space" form, "1" in the "bare" form), ``ids``
    their ids, in order. ``sep`` follows every item in a prompt ("," in both forms: " Monday,
    Tuesday," and "1,2,"). ``truncated_at`` is the first word that was not a single known token (the
    set stops before it).
    """

    name: str
    words: tuple[str, ...]
    ids: tuple[int, ...]
    form: str
    sep: str
    truncated_at: str | None = None

    def render(self, idx: list[int]) -> list[tuple[str, str] | str]:
        """Prompt parts for items ``idx`` (labelled "item0", "item1", ...), ready for encode_marked."""
        parts: list[tuple[str, str] | str] = []
        for k, i in enumerate(idx):
            if k and self.sep:
                parts.append(self.sep)
            parts.append((f"item{k}", self.words[i]))
        if self.sep:
            parts.append(self.sep)
        return parts


def _single_prefix(tokenizer: Any, words: list[str], banned: set[int]) -> tuple[list[int], str | None]:
    """Ids of the longest prefix of ``words`` that are each one known token, and the first word that
    is not (None when all are): more than one token, an id in ``banned`` (unknown and special
    tokens), or an id an earlier word already has (two items one token: no successor to score)."""
    ids: list[int] = []
    for w in words:
        enc = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or int(enc[0]) in banned or int(enc[0]) in ids:
            return ids, w
        ids.append(int(enc[0]))
    return ids, None


def _banned_ids(tokenizer: Any) -> set[int]:
    """The unknown token and the special/added tokens: never an ordinal item."""
    out = special_ids(tokenizer)
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        out.add(int(unk))
    return out


def ordinal_sets(
    tokenizer: Any, *, names: list[str] | None = None, strict: bool = False, min_len: int = 3
) -> dict[str, OrdinalSet]:
    """Ordinal sets that are single known tokens in ``tokenizer``.

    For each set the leading-space form (" Monday") is tried first, then the bare form ("1"); the
    set keeps the longest run of single known tokens from its start (a gap would break successor
    pairs; see ``_single_prefix`` for what counts). Sets shorter than ``min_len`` are dropped, or
    raise TaskError naming the first rejected word when ``strict``; ``strict`` also raises when a set
    had to be truncated. TaskError when no set remains (e.g. a toy vocabulary without English words).
    """
    chosen = list(ORDINAL_SEQUENCES) if names is None else names
    banned = _banned_ids(tokenizer)
    out: dict[str, OrdinalSet] = {}
    rejected: dict[str, str | None] = {}
    for name in chosen:
        if name not in ORDINAL_SEQUENCES:
            raise TaskError(f"unknown ordinal set {name!r}", f"choose from {sorted(ORDINAL_SEQUENCES)}")
        seq = list(ORDINAL_SEQUENCES[name])
        space_ids, space_bad = _single_prefix(tokenizer, [" " + w for w in seq], banned)
        bare_ids, bare_bad = _single_prefix(tokenizer, seq, banned)
        if len(space_ids) >= len(bare_ids):
            ids, bad, words, form = space_ids, space_bad, [" " + w for w in seq], "space"
        else:
            ids, bad, words, form = bare_ids, bare_bad, seq, "bare"
        if strict and bad is not None:
            raise TaskError(
                f"ordinal set {name!r}: {bad!r} is not a single known token in this tokenizer "
                "(several tokens, the unknown token, a special token, or the id of an earlier item)",
                "use strict=False to keep the single-token prefix of the set",
            )
        if len(ids) < min_len:
            rejected[name] = bad
            continue
        out[name] = OrdinalSet(name, tuple(words[: len(ids)]), tuple(ids), form, ",", bad)
    if not out:
        raise TaskError(
            f"no ordinal set has {min_len} leading items that are single known tokens in this tokenizer "
            f"(first rejected word per set: {rejected}); a word must be one token, neither the unknown "
            "token nor a special token",
            "successor heads need a natural-language vocabulary; leave the successor detector out for this model",
        )
    return out


def ordinal_token_sets(tokenizer: Any, **kw: Any) -> dict[str, list[int]]:
    """name -> ordered single-token ids, for OV-circuit successor scoring (see ``ordinal_sets``)."""
    return {k: list(v.ids) for k, v in ordinal_sets(tokenizer, **kw).items()}


def ordinal_rows(
    tokenizer: Any, sets: dict[str, OrdinalSet], *, n: int, seed: int, length: int, prepend_bos: bool,
    add_special_tokens: bool = False,
) -> list[dict[str, Any]]:
    """n ordered runs of ``length`` items; each dict has set, start, text, ids, item_positions."""
    r = rng(seed)
    names = sorted(sets)
    prefix = bos_prefix(tokenizer, prepend_bos)
    rows = []
    for i in range(n):
        s = sets[names[i % len(names)]]
        k = min(length, len(s.ids))
        start = r.randrange(0, len(s.ids) - k + 1)
        idx = list(range(start, start + k))
        text, ids, spans = encode_marked(tokenizer, s.render(idx), add_special_tokens=add_special_tokens)
        pos = []
        for j, item in enumerate(idx):
            a, b = spans[f"item{j}"]
            if b - a != 1 or ids[a] != s.ids[item]:
                raise TaskError(
                    f"ordinal set {s.name!r}: {s.words[item]!r} does not stay one token inside {text!r}",
                    "drop this set (sets=...) for this tokenizer",
                )
            pos.append(a + len(prefix))
        rows.append({"set": s, "idx": idx, "text": text, "ids": prefix + ids, "item_positions": pos})
    return rows


def ordinal(
    tokenizer: Any,
    *,
    n: int = 24,
    seed: int = 0,
    length: int = 6,
    sets: list[str] | None = None,
    prepend_bos: bool = True,
) -> TokenBatch:
    """Runs of consecutive ordinal tokens (" Monday, Tuesday, Wednesday,"), cycling over the sets.

    Meta: ``has_bos``, ``set_name`` list[str], ``item_positions`` list[list[int]] (positions of the
    ordinal tokens), ``successor_ids`` LongTensor [B, T] (at each item position but the last of
    its set, the id of the next item in the set; -1 elsewhere), ``token_sets`` (dict name -> ids).
    """
    check_n(n)
    chosen = ordinal_sets(tokenizer, names=sets)
    rows = ordinal_rows(tokenizer, chosen, n=n, seed=seed, length=length, prepend_bos=prepend_bos)
    ids, mask = pad_batch([r["ids"] for r in rows], pad_id(tokenizer))
    succ = torch.full_like(ids, -1)
    for b, row in enumerate(rows):
        s: OrdinalSet = row["set"]
        for pos, item in zip(row["item_positions"], row["idx"], strict=True):
            if item + 1 < len(s.ids):
                succ[b, pos] = s.ids[item + 1]
    return TokenBatch(
        input_ids=ids,
        attention_mask=mask,
        meta={
            "has_bos": prepend_bos,
            "set_name": [r["set"].name for r in rows],
            "item_positions": [r["item_positions"] for r in rows],
            "successor_ids": succ,
            "token_sets": {k: list(v.ids) for k, v in chosen.items()},
        },
        texts=[r["text"] for r in rows],
        task="ordinal",
        params={"n": n, "seed": seed, "length": length, "sets": sorted(chosen), "prepend_bos": prepend_bos},
    )


def successor_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on the last item of each run only (the answer once the items before it are
    shown; runs are ``length`` items, 6 by default: 5 shown, then the answer)."""
    batch = ordinal(tokenizer, n=n, seed=seed, **params)
    weight = torch.zeros_like(batch.input_ids)
    for b, pos in enumerate(batch.meta["item_positions"]):
        if len(pos) < 2:
            raise TaskError(f"an ordinal run of {len(pos)} item(s) has no answer after a shown item", "use length >= 2")
        weight[b, pos[-1]] = 1
    return loss_on(batch, weight)


PROBE = register_probe(ProbeTask(
    name="ordinal", build=ordinal,
    evaluation=Evaluation(metric="loss_successor", build=successor_loss, params={"length": 6}),
))
