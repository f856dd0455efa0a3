"""Word pieces: annotated windows of a text written for headmine that is dense in long, rare words
(professions, place names, technical terms), so that many words are split into several tokens.

The batch is ``annotated_text``'s (``continuation`` marks the later pieces of a split word). The causal
check measures the next-token loss predicted FROM the later pieces of split words: the positions where
a subword-merge head gathers the earlier pieces of the word, so what comes next depends on the word
being read as one unit.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

from headmine.tasks.annotated_text import annotated_text
from headmine.tasks.base import TokenBatch
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe


@lru_cache(maxsize=1)
def word_pieces_text() -> str:
    """The packaged text (one sentence per line, written for headmine)."""
    return resources.files("headmine.tasks").joinpath("data/word_pieces.txt").read_text(encoding="utf-8")


def word_pieces(tokenizer: Any, *, n: int = 16, seed: int = 0, seq_len: int = 48,
                prepend_bos: bool = True) -> TokenBatch:
    """``annotated_text`` windows of the packaged rare-word text."""
    batch = annotated_text(tokenizer, n=n, seed=seed, seq_len=seq_len, prepend_bos=prepend_bos,
                           text=word_pieces_text())
    return TokenBatch(input_ids=batch.input_ids, attention_mask=batch.attention_mask, meta=batch.meta,
                      texts=batch.texts, task="word_pieces", params={**batch.params, "source": "word_pieces.txt"})


def continuation_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on tokens predicted from a later piece of a split word."""
    batch = word_pieces(tokenizer, n=n, seed=seed, **params)
    weight = batch.attention_mask.clone() * 0
    weight[:, 1:] = batch.meta["continuation"][:, :-1].long() * batch.attention_mask[:, 1:]
    return loss_on(batch, weight)


PROBE = register_probe(ProbeTask(
    name="word_pieces", build=word_pieces, defaults={"n": 16, "seq_len": 48},
    evaluation=Evaluation(metric="loss_after_piece", build=continuation_loss, params={"seq_len": 48},
                          inherit=("seq_len",)),
))
