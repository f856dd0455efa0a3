"""Short reviews with a clear valence (probe task ``sentiment``), the setting of Tigges, Hollinsworth,
Geiger and Nanda 2023 (Linear Representations of Sentiment in Large Language Models, arXiv 2310.15154,
ToyMovieReview: "I thought this movie was {ADJ}, I {VRB} it. Conclusion: This movie is"): an evaluative
adjective, a comma, a verb of the same valence, a period, then a conclusion the model completes with
" good" or " bad".

The templates and word lists are written for headmine (``TEMPLATES``, ``POSITIVE``/``NEGATIVE``
adjectives and verbs; neither answer word is among the sentiment words, so no head can copy the answer).
Half the prompts are positive, half negative, the template, words and valence drawn with ``seed``.

Meta (positions are token indices of the padded batch):
- ``sentiment`` BoolTensor [B, T]: the tokens of the adjective and the verb;
- ``summary`` BoolTensor [B, T]: the comma after the adjective and the period after the verb (the
  positions where Tigges et al. find the sentiment summarised);
- ``comma_pos``, ``period_pos``, ``end_pos`` LongTensor [B];
- ``positive`` BoolTensor [B]; ``target_id`` / ``wrong_id`` LongTensor [B] (" good"/" bad" ids, the
  right valence first).

The causal evaluation is minus the mean logit difference of the right answer over the wrong one at the
last token (higher = worse); ``valence_accuracy`` measures how often the model prefers the right one.
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, check_n, encode_prompt, pad_batch, pad_id, rng, single_token_id
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask
from headmine.tasks.registry import register_probe

TEMPLATES: tuple[tuple[str, str, str], ...] = (
    ("I thought this movie was", "I", "Conclusion: This movie is"),
    ("The food at this restaurant was", "we", "In short, the restaurant is"),
    ("My new phone is", "I", "Overall, the phone is"),
    ("The hotel we stayed at was", "we", "All in all, the hotel is"),
    ("This book was", "I", "To sum up, this book is"),
    ("The concert last night was", "we", "In a word, the concert was"),
)
"""(before the adjective, subject of the verb, conclusion): "{0} {ADJ}, {1} {VRB} it. {2}"."""

POSITIVE_ADJECTIVES = ("great", "wonderful", "excellent", "amazing", "fantastic", "lovely", "brilliant",
                       "superb", "perfect", "delightful", "charming", "beautiful")
NEGATIVE_ADJECTIVES = ("terrible", "awful", "horrible", "dreadful", "boring", "poor", "disappointing",
                       "dull", "ugly", "miserable", "lousy", "annoying")
POSITIVE_VERBS = ("loved", "enjoyed", "liked", "adored", "admired", "appreciated")
NEGATIVE_VERBS = ("hated", "disliked", "despised", "loathed", "regretted", "resented")
ANSWERS = (" good", " bad")
"""The completion of a positive and of a negative review."""


def sentiment(tokenizer: Any, *, n: int = 32, seed: int = 0, prepend_bos: bool = True) -> TokenBatch:
    """``n`` reviews, alternating positive and negative, template and words drawn with ``seed``."""
    check_n(n)
    good, bad = (single_token_id(tokenizer, a) for a in ANSWERS)
    r = rng(seed)
    rows, texts, spans_all, positive = [], [], [], []
    for i in range(n):
        pos = i % 2 == 0
        before, subject, after = r.choice(TEMPLATES)
        adj = r.choice(POSITIVE_ADJECTIVES if pos else NEGATIVE_ADJECTIVES)
        verb = r.choice(POSITIVE_VERBS if pos else NEGATIVE_VERBS)
        parts = [f"{before} ", ("adj", adj), ("comma", ","), f" {subject} ", ("verb", verb), " it",
                 ("period", "."), f" {after}"]
        text, ids, spans = encode_prompt(tokenizer, parts, prepend_bos=prepend_bos)
        for label, word in (("comma", "adj"), ("period", "verb")):
            if spans[label][1] - spans[label][0] != 1 or spans[label][0] < spans[word][1]:
                raise TaskError(f"the {label} of {text!r} is not a token of its own",
                                "use a tokenizer that splits punctuation from words")
        rows.append(ids)
        texts.append(text)
        spans_all.append(spans)
        positive.append(pos)
    ids_t, mask = pad_batch(rows, pad_id(tokenizer))
    b, t = ids_t.shape
    senti = torch.zeros(b, t, dtype=torch.bool)
    summary = torch.zeros(b, t, dtype=torch.bool)
    for i, spans in enumerate(spans_all):
        for label in ("adj", "verb"):
            senti[i, spans[label][0]:spans[label][1]] = True
        summary[i, spans["comma"][0]] = summary[i, spans["period"][0]] = True
    pos_t = torch.tensor(positive, dtype=torch.bool)
    good_t, bad_t = torch.full((b,), good), torch.full((b,), bad)
    meta = {"sentiment": senti, "summary": summary,
            "comma_pos": torch.tensor([s["comma"][0] for s in spans_all], dtype=torch.long),
            "period_pos": torch.tensor([s["period"][0] for s in spans_all], dtype=torch.long),
            "end_pos": mask.sum(1) - 1, "positive": pos_t,
            "target_id": torch.where(pos_t, good_t, bad_t), "wrong_id": torch.where(pos_t, bad_t, good_t)}
    return TokenBatch(input_ids=ids_t, attention_mask=mask, meta=meta, texts=texts, task="sentiment",
                      params={"n": n, "seed": seed, "prepend_bos": prepend_bos})


def valence_logit_diff(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """[B] logit(right answer) - logit(wrong answer) at each prompt's last token."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, batch.meta["end_pos"].to(logits.device)].float()
    return last[rows, batch.meta["target_id"].to(logits.device)] - last[rows, batch.meta["wrong_id"].to(logits.device)]


def valence_accuracy(logits: torch.Tensor, batch: TokenBatch) -> float:
    """Fraction of prompts where the right answer's logit beats the wrong one's (chance 0.5)."""
    return float((valence_logit_diff(logits, batch) > 0).double().mean())


def minus_valence_logit_diff(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Minus the mean right-minus-wrong logit difference at the last token (higher = worse)."""
    batch = sentiment(tokenizer, n=n, seed=seed, **params)
    return EvalBatch(batch=batch, measure=lambda logits: float(-valence_logit_diff(logits, batch).mean()))


PROBE = register_probe(ProbeTask(
    name="sentiment", build=sentiment, defaults={"n": 32},
    evaluation=Evaluation(metric="minus_valence_logit_diff", build=minus_valence_logit_diff),
))
