"""Probe batches for head detectors: one capture pass per task, metadata say where to look.

- ``repeated_tokens``: BOS + r + r (+ r ...), r random tokens (induction, previous-token, sinks).
- ``natural_text``: windows of the embedded English corpus (previous-token, duplicate-token, sinks).
- ``ordinal``: ordinal sequences (" Monday Tuesday ...") and the token sets for successor scoring.
- ``needle``: needle-in-a-haystack prompts (retrieval heads).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import (
    PROBES,
    TokenBatch,
    bos_id,
    check_n,
    encode_marked,
    pad_batch,
    pad_id,
    rng,
    special_ids,
    torch_rng,
)


# --------------------------------------------------------------------------- shared helpers
@lru_cache(maxsize=1)
def corpus_text() -> str:
    """The embedded English corpus (plain prose written for headmine; no download)."""
    return resources.files("headmine.tasks").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def corpus_paragraphs() -> list[str]:
    return [p.strip() for p in corpus_text().split("\n\n") if p.strip()]


def corpus_sentences() -> list[str]:
    out: list[str] = []
    for para in corpus_paragraphs():
        out.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", para) if s.strip())
    return out


def _bos_prefix(tokenizer: Any, prepend_bos: bool) -> list[int]:
    if not prepend_bos:
        return []
    b = bos_id(tokenizer)
    if b is None:
        raise TaskError(
            "prepend_bos=True but the tokenizer has neither a BOS nor an EOS token",
            "pass prepend_bos=False",
        )
    return [b]


def previous_occurrence(ids: list[int], start: int = 0) -> list[int]:
    """For each position, the most recent earlier position (>= start) holding the same id, else -1."""
    last: dict[int, int] = {}
    out = []
    for t, tok in enumerate(ids):
        out.append(last.get(tok, -1) if t >= start else -1)
        if t >= start:
            last[tok] = t
    return out


# --------------------------------------------------------------------------- repeated random tokens
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


@PROBES.register("repeated_tokens")
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
    prefix = _bos_prefix(tokenizer, prepend_bos)
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


# --------------------------------------------------------------------------- natural text
@PROBES.register("natural_text")
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
    prefix = _bos_prefix(tokenizer, prepend_bos)
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


# --------------------------------------------------------------------------- ordinal sequences
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
    their ids, in order. ``sep`` joins items in a prompt ("" for the space form, "," for the bare
    form). ``truncated_at`` is the first word that was not a single token (the set stops before it).
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


def _single_prefix(tokenizer: Any, words: list[str]) -> tuple[list[int], str | None]:
    ids: list[int] = []
    for w in words:
        enc = tokenizer(w, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            return ids, w
        ids.append(int(enc[0]))
    return ids, None


def ordinal_sets(
    tokenizer: Any, *, names: list[str] | None = None, strict: bool = False, min_len: int = 3
) -> dict[str, OrdinalSet]:
    """Ordinal sets that are single tokens in ``tokenizer``.

    For each set the leading-space form (" Monday") is tried first, then the bare form ("1"); the
    set keeps the longest run of single-token items from its start (a gap would break successor
    pairs). Sets shorter than ``min_len`` are dropped, or raise TaskError naming the first multi-token
    word when ``strict``; ``strict`` also raises when a set had to be truncated.
    """
    chosen = list(ORDINAL_SEQUENCES) if names is None else names
    out: dict[str, OrdinalSet] = {}
    for name in chosen:
        if name not in ORDINAL_SEQUENCES:
            raise TaskError(f"unknown ordinal set {name!r}", f"choose from {sorted(ORDINAL_SEQUENCES)}")
        seq = list(ORDINAL_SEQUENCES[name])
        space_ids, space_bad = _single_prefix(tokenizer, [" " + w for w in seq])
        bare_ids, bare_bad = _single_prefix(tokenizer, seq)
        if len(space_ids) >= len(bare_ids):
            ids, bad, words, form, sep = space_ids, space_bad, [" " + w for w in seq], "space", ""
        else:
            ids, bad, words, form, sep = bare_ids, bare_bad, seq, "bare", ","
        if strict and bad is not None:
            raise TaskError(
                f"ordinal set {name!r}: {bad!r} is not a single token in this tokenizer",
                "use strict=False to keep the single-token prefix of the set",
            )
        if len(ids) < min_len:
            continue
        out[name] = OrdinalSet(name, tuple(words[: len(ids)]), tuple(ids), form, sep, bad)
    if not out:
        raise TaskError("no ordinal set is made of single tokens in this tokenizer", "lower min_len")
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
    prefix = _bos_prefix(tokenizer, prepend_bos)
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


@PROBES.register("ordinal")
def ordinal(
    tokenizer: Any,
    *,
    n: int = 24,
    seed: int = 0,
    length: int = 6,
    sets: list[str] | None = None,
    prepend_bos: bool = True,
) -> TokenBatch:
    """Runs of consecutive ordinal tokens (" Monday Tuesday Wednesday"), cycling over the sets.

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


# --------------------------------------------------------------------------- needle in a haystack
NEEDLE_ADJECTIVES = ("blue", "silver", "golden", "green", "purple", "crimson", "quiet", "hidden",
                     "northern", "ancient", "copper", "velvet", "frozen", "painted", "distant", "amber")
NEEDLE_NOUNS = ("lighthouse", "teapot", "lantern", "violin", "umbrella", "compass", "kettle", "bicycle",
                "tower", "garden", "bridge", "harbor", "mirror", "carriage", "observatory", "orchard")


@PROBES.register("needle")
def needle(
    tokenizer: Any,
    *,
    n: int = 3,
    seed: int = 0,
    context_lengths: tuple[int, ...] = (256, 512),
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    prepend_bos: bool = True,
    max_length: int | None = None,
) -> TokenBatch:
    """Needle-in-a-haystack prompts: corpus sentences with one invented fact inserted at each depth,
    for each context length (in tokens, approximate: the haystack is whole sentences), then the
    question. Rows = n needles x len(context_lengths) x len(depths), in that nesting order.

    Needle: "The secret code of the {adjective} {noun} is {5-digit number}." (random per needle from
    the seed: unknowable to the model). The prompt ends with "...\\nAnswer: The secret code of the
    {adjective} {noun} is" so the answer continues the prompt.

    Meta: ``needle_span`` [B, 2] (token span of the needle sentence), ``answer_span`` [B, 2] (the
    answer's tokens inside the needle), ``answer_ids`` list of tuples (those token ids, what a
    retrieval head copies), ``answer`` list[str], ``depth`` list[float], ``context_length`` [B]
    (requested), ``n_tokens`` [B] (actual), ``has_bos``.
    """
    check_n(n)
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise TaskError(f"depth {d} is outside [0, 1]", "use fractions such as 0.0, 0.5, 1.0")
    r = rng(seed)
    sentences = corpus_sentences()
    lens = [len(tokenizer(" " + s, add_special_tokens=False)["input_ids"]) for s in sentences]
    prefix = _bos_prefix(tokenizer, prepend_bos)
    rows: list[list[int]] = []
    metas: list[dict[str, Any]] = []
    texts: list[str] = []
    for _ in range(n):
        adj, noun = r.choice(NEEDLE_ADJECTIVES), r.choice(NEEDLE_NOUNS)
        number = str(r.randrange(10000, 100000))
        subject = f"the secret code of the {adj} {noun}"
        question = f"\n\nQuestion: What is {subject}?\nAnswer: The secret code of the {adj} {noun} is"
        n_fixed = len(tokenizer(f" The secret code of the {adj} {noun} is {number}." + question,
                                add_special_tokens=False)["input_ids"]) + len(prefix)
        start = r.randrange(len(sentences))
        for length in context_lengths:
            budget, hay, k = length - n_fixed, [], start
            while budget > 0 and len(hay) < 10 * len(sentences):
                if budget - lens[k % len(sentences)] < 0 and hay:
                    break
                hay.append(sentences[k % len(sentences)])
                budget -= lens[k % len(sentences)]
                k += 1
            if not hay:
                raise TaskError(f"context length {length} leaves no room for a haystack", "use longer contexts")
            for depth in depths:
                cut = round(depth * len(hay))
                before = " ".join(hay[:cut])
                after = " ".join(hay[cut:])
                parts: list[Any] = []
                if before:
                    parts.append(before + " ")
                parts += [("needle_head", f"The secret code of the {adj} {noun} is"), ("answer", f" {number}"),
                          ("needle_tail", ".")]
                if after:
                    parts.append(" " + after)
                parts.append(question)
                text, ids, spans = encode_marked(tokenizer, parts, add_special_tokens=False)
                ids = prefix + ids
                off = len(prefix)
                a0, a1 = spans["answer"]
                # the answer span must not swallow the period or the space before it
                answer_ids = tuple(ids[a0 + off : a1 + off])
                if max_length is not None and len(ids) > max_length:
                    raise TaskError(f"needle prompt is {len(ids)} tokens, longer than max_length={max_length}",
                                    "use shorter context_lengths")
                rows.append(ids)
                texts.append(text)
                metas.append({
                    "needle_span": (spans["needle_head"][0] + off, spans["needle_tail"][1] + off),
                    "answer_span": (a0 + off, a1 + off),
                    "answer_ids": answer_ids,
                    "answer": number,
                    "depth": depth,
                    "context_length": length,
                    "n_tokens": len(ids),
                })
    input_ids, mask = pad_batch(rows, pad_id(tokenizer))
    meta: dict[str, Any] = {
        "needle_span": torch.tensor([m["needle_span"] for m in metas], dtype=torch.long),
        "answer_span": torch.tensor([m["answer_span"] for m in metas], dtype=torch.long),
        "answer_ids": [m["answer_ids"] for m in metas],
        "answer": [m["answer"] for m in metas],
        "depth": [m["depth"] for m in metas],
        "context_length": torch.tensor([m["context_length"] for m in metas], dtype=torch.long),
        "n_tokens": torch.tensor([m["n_tokens"] for m in metas], dtype=torch.long),
        "has_bos": bool(prefix),
    }
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=mask,
        meta=meta,
        texts=texts,
        task="needle",
        params={"n": n, "seed": seed, "context_lengths": list(context_lengths), "depths": list(depths),
                "prepend_bos": prepend_bos},
    )


__all__ = [
    "ORDINAL_SEQUENCES", "OrdinalSet", "corpus_paragraphs", "corpus_sentences", "corpus_text", "natural_text",
    "needle", "ordinal", "ordinal_rows", "ordinal_sets", "ordinal_token_sets",
    "previous_occurrence", "repeated_tokens", "token_pool",
]
