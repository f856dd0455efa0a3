"""Natural text with per-token annotations: words, sentences, delimiters and token rarity.

The windows are those of ``natural_text`` (same corpus, same seed, same ids); the builder adds what the
token-class detectors need, computed from the character offsets of the fast tokenizer (exact for
byte-level BPE and SentencePiece alike):

- ``word_id`` LongTensor [B, T]: the word each token belongs to (-1 on BOS and padding). A token starts
  a new word unless its first character and the character before it are both letters or digits (so
  "Helsinki" split as "Hel" + "sinki" is one word, "don't" is "don" + "'t" two; the first token of a
  window starts a word, since its earlier pieces are cut off);
- ``word_start`` / ``continuation`` BoolTensor [B, T]: the first piece of a word / a later piece;
- ``sentence_id`` LongTensor [B, T]: a new sentence starts after a token ending in ". ! ?";
- ``delimiter`` BoolTensor [B, T]: punctuation or whitespace-only tokens (no letter or digit);
- ``pieces`` list of B lists of T strings: each token's own characters ("" on BOS and padding);
- ``rarity`` LongTensor [B, T]: the token id, a frequency proxy (BPE vocabularies give ids in merge
  order, so a higher id is a later merge, i.e. a rarer string; SentencePiece orders pieces by score
  the same way); -1 on BOS, padding and special tokens.

The causal check measures the next-token loss on every real token with context (as ``natural_text``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, pad_rows, special_ids
from headmine.tasks.corpus import corpus_text
from headmine.tasks.natural_text import natural_text, text_loss
from headmine.tasks.probe import Evaluation, ProbeTask
from headmine.tasks.registry import register_probe

SENTENCE_END = (".", "!", "?")


@lru_cache(maxsize=8)
def _offsets(tokenizer: Any, text: str) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return tuple(enc["input_ids"]), tuple((int(a), int(b)) for a, b in enc["offset_mapping"])


def token_annotations(text: str, offsets: list[tuple[int, int]]) -> dict[str, list[Any]]:
    """Word ids, word starts, sentence ids and delimiter flags of consecutive tokens of ``text``."""
    word, sent = -1, 0
    out: dict[str, list[Any]] = {"word_id": [], "word_start": [], "sentence_id": [], "delimiter": []}
    prev_end_sentence = False
    for k, (a, b) in enumerate(offsets):
        piece = text[a:b]
        first = piece[:1]
        before = text[a - 1] if a > 0 else " "
        starts = k == 0 or not (first.isalnum() and before.isalnum())
        if starts:
            word += 1
        if prev_end_sentence:
            sent += 1
        out["word_id"].append(word)
        out["word_start"].append(starts)
        out["sentence_id"].append(sent)
        out["delimiter"].append(not any(c.isalnum() for c in piece))
        prev_end_sentence = piece.strip().endswith(SENTENCE_END)
    return out


def annotated_text(tokenizer: Any, *, n: int = 16, seed: int = 0, seq_len: int = 64,
                   prepend_bos: bool = True, text: str | None = None) -> TokenBatch:
    """``natural_text`` windows of the embedded corpus (or ``text``) plus word, sentence, delimiter and
    rarity annotations (see the module docstring)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TaskError("annotated_text needs a fast tokenizer (character offsets)",
                        "load the model's fast tokenizer (use_fast=True)")
    batch = natural_text(tokenizer, n=n, seed=seed, seq_len=seq_len, prepend_bos=prepend_bos, text=text)
    text = corpus_text() if text is None else text
    ids, offsets = _offsets(tokenizer, text)
    shift = 1 if batch.meta["has_bos"] else 0
    specials = special_ids(tokenizer)
    cols: dict[str, list[list[Any]]] = {"word_id": [], "word_start": [], "sentence_id": [], "delimiter": [],
                                        "rarity": [], "pieces": []}
    for row, start in zip(batch.input_ids.tolist(), batch.meta["window_start"].tolist(), strict=True):
        window = list(ids[start:start + seq_len])
        if window != row[shift:shift + seq_len]:
            raise TaskError("the annotated windows do not match the natural-text windows",
                            "the tokenizer must tokenise the corpus the same way twice")
        ann = token_annotations(text, list(offsets[start:start + seq_len]))
        for key in ("word_id", "sentence_id"):
            cols[key].append([-1] * shift + ann[key])
        for key in ("word_start", "delimiter"):
            cols[key].append([False] * shift + ann[key])
        cols["pieces"].append([""] * shift + [text[a:b] for a, b in offsets[start:start + seq_len]])
        cols["rarity"].append([-1] * shift + [-1 if t in specials else int(t) for t in window])
    width = batch.input_ids.shape[1]
    meta = dict(batch.meta)
    for key in ("word_id", "sentence_id", "rarity"):
        meta[key] = pad_rows(cols[key], width, -1, torch.long)
    for key in ("word_start", "delimiter"):
        meta[key] = pad_rows(cols[key], width, False, torch.bool)
    meta["pieces"] = [p + [""] * (width - len(p)) for p in cols["pieces"]]
    meta["continuation"] = (meta["word_id"] >= 0) & ~meta["word_start"]
    return TokenBatch(input_ids=batch.input_ids, attention_mask=batch.attention_mask, meta=meta,
                      texts=batch.texts, task="annotated_text", params={**batch.params, "annotated": True})


PROBE = register_probe(ProbeTask(
    name="annotated_text", build=annotated_text, defaults={"n": 16, "seq_len": 64},
    evaluation=Evaluation(metric="loss_text", build=text_loss, params={"seq_len": 64}, inherit=("seq_len",)),
))
