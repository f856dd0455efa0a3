"""Three-letter acronyms (the task of García-Carrasco, Maté and Trujillo 2024, "How does GPT-2 Predict Acronyms?
Extracting and Understanding a Circuit via Mechanistic Interpretability", arXiv 2405.04156): "The Digital
Energy Council (DEC)". The model reads three capitalised words and an opening parenthesis and should
spell their initials, one letter per token.

Tokenisation: BPE tokenizers merge letter runs ("(CEO" is "(", "CE", "O" in SmolLM2's), so the acronym is
written as THREE single-letter tokens (the ids of "D", "E", "C", each a token of the vocabulary) rather than
the tokenizer's own merged encoding; the few-shot examples are written the same way, so the format is shown in
context. The words come from the packaged ``data/acronym_words.txt``, kept where " Word" is one token and its
initial is a one-token capital letter; the three initials of a prompt are distinct, so each letter has one
word to come from. Made-up names: the acronym cannot be recalled, only spelled.

Meta: ``word_pos`` LongTensor [B, 3] (the three words of the open name), ``query_pos`` LongTensor [B, 3] (the
positions that predict letter k: "(" then the first two letters), ``letter_pos`` LongTensor [B, 3] (the three
letters), ``letter_ids`` LongTensor [B, 3]. The causal evaluation measures the mean cross-entropy of the three
letters (teacher-forced) at their query positions.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import (
    TokenBatch,
    bos_prefix,
    check_n,
    is_single_token,
    pad_batch,
    pad_id,
    rng,
    single_token_id,
)
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe

N_LETTERS = 3


@lru_cache(maxsize=1)
def acronym_words() -> tuple[str, ...]:
    """The packaged candidate words."""
    text = resources.files("headmine.tasks").joinpath("data", "acronym_words.txt").read_text(encoding="utf-8")
    return tuple(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def usable_words(tokenizer: Any) -> list[str]:
    """Words that are one token with a leading space and whose initial is a one-token capital letter."""
    return [w for w in acronym_words() if is_single_token(tokenizer, " " + w) and is_single_token(tokenizer, w[0])]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def acronyms(tokenizer: Any, *, n: int = 24, seed: int = 0, n_shots: int = 2, prepend_bos: bool = True) -> TokenBatch:
    """``n`` prompts: ``n_shots`` spelled names, then "The W1 W2 W3 (" and the three letters, then ")"."""
    check_n(n)
    if n_shots < 0:
        raise TaskError(f"n_shots={n_shots} must be >= 0")
    words = usable_words(tokenizer)
    initials = {w[0] for w in words}
    if len(initials) < N_LETTERS:
        raise TaskError(f"only {len(words)} of the acronym words are single tokens here ({len(initials)} distinct "
                        "initials)", "the acronyms task needs a natural-language tokenizer")
    letter_id = {c: single_token_id(tokenizer, c) for c in initials}
    r = rng(seed)

    def name() -> list[str]:
        while True:
            picked = r.sample(words, N_LETTERS)
            if len({w[0] for w in picked}) == N_LETTERS:
                return picked

    open_ = _ids(tokenizer, " (")
    close = _ids(tokenizer, ")\n")
    rows, metas = [], []
    for _ in range(n):
        ids = bos_prefix(tokenizer, prepend_bos)
        for _ in range(n_shots):
            shot = name()
            ids += _ids(tokenizer, "The " + " ".join(shot)) + open_ + [letter_id[w[0]] for w in shot] + close
        target = name()
        head = _ids(tokenizer, "The")
        word_pos = [len(ids) + len(head) + k for k in range(N_LETTERS)]
        ids += head + [single_token_id(tokenizer, " " + w) for w in target] + open_
        paren = len(ids) - 1
        letter_pos = [paren + 1 + k for k in range(N_LETTERS)]
        ids += [letter_id[w[0]] for w in target] + close
        rows.append(ids)
        metas.append({"word_pos": word_pos, "query_pos": [paren, *letter_pos[:-1]], "letter_pos": letter_pos,
                      "letter_ids": [letter_id[w[0]] for w in target]})
    ids_t, mask = pad_batch(rows, pad_id(tokenizer))
    meta = {k: torch.tensor([m[k] for m in metas], dtype=torch.long) for k in metas[0]}
    texts = [tokenizer.decode(r) for r in rows]
    return TokenBatch(input_ids=ids_t, attention_mask=mask, meta=meta, texts=texts, task="acronyms",
                      params={"n": n, "seed": seed, "n_shots": n_shots, "prepend_bos": prepend_bos})


def letter_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Mean cross-entropy of the three acronym letters, each predicted from the token before it."""
    batch = acronyms(tokenizer, n=n, seed=seed, **params)
    weight = torch.zeros_like(batch.input_ids)
    weight.scatter_(1, batch.meta["letter_pos"], 1)
    return loss_on(batch, weight)


PROBE = register_probe(ProbeTask(
    name="acronyms", build=acronyms, defaults={"n": 16},
    evaluation=Evaluation(metric="loss_acronym_letters", build=letter_loss, inherit=("n_shots",)),
))
