"""Apostrophes: a packaged text dense in contractions and possessives (written for headmine), with each
token flagged when it holds an apostrophe (``apostrophe`` BoolTensor [B, T]: "'s", "'t", "n't"...).

The batch is ``annotated_text``'s over the packaged text. The causal check measures the next-token loss
on the three tokens after each apostrophe token (what follows a contraction or a possessive).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from headmine.tasks.annotated_text import annotated_text
from headmine.tasks.base import TokenBatch
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe

APOSTROPHES = ("'", "\u2019")
AFTER = 3


@lru_cache(maxsize=1)
def apostrophes_text() -> str:
    return resources.files("headmine.tasks").joinpath("data/apostrophes.txt").read_text(encoding="utf-8")


def apostrophes(tokenizer: Any, *, n: int = 16, seed: int = 0, seq_len: int = 32,
                prepend_bos: bool = True) -> TokenBatch:
    """``annotated_text`` windows of the packaged text, plus ``apostrophe``."""
    batch = annotated_text(tokenizer, n=n, seed=seed, seq_len=seq_len, prepend_bos=prepend_bos,
                           text=apostrophes_text())
    flag = torch.tensor([[any(c in p for c in APOSTROPHES) for p in row] for row in batch.meta["pieces"]],
                        dtype=torch.bool)
    return TokenBatch(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                      meta={**batch.meta, "apostrophe": flag}, texts=batch.texts, task="apostrophes",
                      params={**batch.params, "source": "apostrophes.txt"})


def after_apostrophe_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on the ``AFTER`` tokens that follow each apostrophe token."""
    batch = apostrophes(tokenizer, n=n, seed=seed, **params)
    flag = batch.meta["apostrophe"]
    weight = torch.zeros_like(batch.attention_mask)
    for k in range(1, AFTER + 1):
        weight[:, k:] |= flag[:, :-k].long()
    return loss_on(batch, weight * batch.attention_mask)


PROBE = register_probe(ProbeTask(
    name="apostrophes", build=apostrophes, defaults={"n": 16, "seq_len": 32},
    evaluation=Evaluation(metric="loss_after_apostrophe", build=after_apostrophe_loss, params={"seq_len": 32},
                          inherit=("seq_len",)),
))
