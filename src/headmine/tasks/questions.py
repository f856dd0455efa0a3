"""Questions and answers: a packaged text of short question/answer pairs (written for headmine), with
each token flagged when it is interrogative material: a wh-word (what, who, whom, whose, where, when,
why, how, which) or a question mark (``interrogative``, ``question_mark`` BoolTensors [B, T]).

The batch is ``annotated_text``'s over the packaged text (sentence ids, delimiters, pieces...). The
causal check measures the next-token loss on the question marks: predicting that a question ends
needs the question's interrogative material, which an interrogation head brings to the end.
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

WH_WORDS = frozenset({"what", "who", "whom", "whose", "where", "when", "why", "how", "which"})


@lru_cache(maxsize=1)
def questions_text() -> str:
    return resources.files("headmine.tasks").joinpath("data/questions.txt").read_text(encoding="utf-8")


def questions(tokenizer: Any, *, n: int = 16, seed: int = 0, seq_len: int = 48,
              prepend_bos: bool = True) -> TokenBatch:
    """``annotated_text`` windows of the packaged questions, plus ``interrogative`` and ``question_mark``."""
    batch = annotated_text(tokenizer, n=n, seed=seed, seq_len=seq_len, prepend_bos=prepend_bos,
                           text=questions_text())
    pieces = batch.meta["pieces"]
    qmark = torch.tensor([[("?" in p) for p in row] for row in pieces], dtype=torch.bool)
    wh = torch.tensor([[p.strip().lower() in WH_WORDS for p in row] for row in pieces], dtype=torch.bool)
    meta = {**batch.meta, "question_mark": qmark, "interrogative": qmark | wh}
    return TokenBatch(input_ids=batch.input_ids, attention_mask=batch.attention_mask, meta=meta,
                      texts=batch.texts, task="questions", params={**batch.params, "source": "questions.txt"})


def question_mark_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Next-token loss on the question marks."""
    batch = questions(tokenizer, n=n, seed=seed, **params)
    return loss_on(batch, batch.meta["question_mark"].long() * batch.attention_mask)


PROBE = register_probe(ProbeTask(
    name="questions", build=questions, defaults={"n": 16, "seq_len": 48},
    evaluation=Evaluation(metric="loss_question_mark", build=question_mark_loss, params={"seq_len": 48},
                          inherit=("seq_len",)),
))
