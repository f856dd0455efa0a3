"""Multiple-choice questions with letter labels (the setting of Lieberum et al. 2023, "Does Circuit
Analysis Interpretability Scale? Evidence from Multiple Choice Capabilities in Chinchilla", arXiv
2307.09458): a question, four options labelled A-D, then "Answer:"; the model should output the letter
of the correct option. The questions (``data/mcq.tsv``) are easy general-knowledge items written for
headmine, so a small model can answer some of them; options are shuffled per prompt (seeded), so the
correct letter is spread over A-D.

Each prompt can start with ``n_shots`` solved questions (other items) to show the format. The capture
plan reads the last token (the position that predicts the letter); the causal check measures the
cross-entropy of the correct letter there.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, check_n, encode_prompt, pad_batch, pad_id, rng, single_token_id
from headmine.tasks.probe import CapturePlan, EvalBatch, Evaluation, ProbeTask
from headmine.tasks.registry import register_probe

LETTERS = ("A", "B", "C", "D")


@lru_cache(maxsize=1)
def mcq_items() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(question, correct option, distractors) from the packaged ``data/mcq.tsv``."""
    text = resources.files("headmine.tasks").joinpath("data", "mcq.tsv").read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        q, correct, *wrong = line.split("\t")
        if len(wrong) != len(LETTERS) - 1:
            raise TaskError(f"mcq.tsv line {line!r} needs a question, the answer and {len(LETTERS) - 1} distractors")
        out.append((q, correct, tuple(wrong)))
    return tuple(out)


def _block(question: str, options: list[str], answer: str | None) -> list[Any]:
    """Prompt parts of one question: the letters of the options are labelled L0..L3."""
    parts: list[Any] = [f"Question: {question}\n"]
    for k, (letter, option) in enumerate(zip(LETTERS, options, strict=True)):
        parts += [(f"L{k}", letter), f". {option}\n"]
    parts.append("Answer:" if answer is None else f"Answer: {answer}\n\n")
    return parts


def mcq(tokenizer: Any, *, n: int = 32, seed: int = 0, n_shots: int = 1, prepend_bos: bool = True) -> TokenBatch:
    """``n`` prompts: ``n_shots`` solved questions, then one open question ending in "Answer:".

    Meta: ``letter_pos`` LongTensor [B, 4] (position of each option letter of the open question),
    ``correct`` LongTensor [B] (index of the correct option), ``letter_ids`` LongTensor [B, 4] (ids of
    " A" .. " D"), ``target_id`` LongTensor [B] (the correct one), ``end_pos`` LongTensor [B].
    """
    check_n(n)
    items = mcq_items()
    if n_shots < 0 or n_shots >= len(items):
        raise TaskError(f"n_shots={n_shots} must lie in 0..{len(items) - 1}")
    letter_ids = [single_token_id(tokenizer, " " + letter) for letter in LETTERS]
    r = rng(seed)
    perm = list(range(len(items)))
    r.shuffle(perm)  # the open questions: every item once before any repeats
    rows, metas, texts = [], [], []
    for i in range(n):
        q_index = perm[i % len(items)]
        shots = [items[j] for j in r.sample([j for j in range(len(items)) if j != q_index], n_shots)]
        q, correct, wrong = items[q_index]
        parts: list[Any] = []
        for sq, sc, sw in shots:
            opts = [sc, *sw]
            r.shuffle(opts)
            parts += [p if isinstance(p, str) else p[1] for p in _block(sq, opts, LETTERS[opts.index(sc)])]
        opts = [correct, *wrong]
        r.shuffle(opts)
        k = opts.index(correct)
        text, ids, spans = encode_prompt(tokenizer, parts + _block(q, opts, None), prepend_bos=prepend_bos)
        rows.append(ids)
        texts.append(text)
        metas.append({"letter_pos": [spans[f"L{j}"][1] - 1 for j in range(len(LETTERS))], "correct": k})
    ids_t, mask = pad_batch(rows, pad_id(tokenizer))
    correct_t = torch.tensor([m["correct"] for m in metas], dtype=torch.long)
    letters = torch.tensor(letter_ids, dtype=torch.long).expand(n, len(LETTERS)).clone()
    return TokenBatch(
        input_ids=ids_t, attention_mask=mask,
        meta={"letter_pos": torch.tensor([m["letter_pos"] for m in metas], dtype=torch.long), "correct": correct_t,
              "letter_ids": letters, "target_id": letters.gather(1, correct_t[:, None])[:, 0],
              "end_pos": mask.sum(1) - 1},
        texts=texts, task="mcq", params={"n": n, "seed": seed, "n_shots": n_shots, "prepend_bos": prepend_bos},
    )


def letter_logprobs(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """[B, 4] log-probabilities of " A" .. " D" at each prompt's last token (full-vocabulary softmax)."""
    end = batch.meta["end_pos"].to(logits.device)
    last = logits[torch.arange(logits.shape[0], device=logits.device), end].float().log_softmax(-1)
    return last.gather(1, batch.meta["letter_ids"].to(logits.device))


def correct_letter_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Mean cross-entropy of the correct letter at the last token (higher = worse)."""
    batch = mcq(tokenizer, n=n, seed=seed, **params)
    correct = batch.meta["correct"]

    def measure(logits: torch.Tensor) -> float:
        lp = letter_logprobs(logits, batch)
        return float(-lp.gather(1, correct.to(lp.device)[:, None]).mean())

    return EvalBatch(batch=batch, measure=measure)


PROBE = register_probe(ProbeTask(
    name="mcq", build=mcq, defaults={"n": 32}, plan=CapturePlan(query_rows="last"),
    evaluation=Evaluation(metric="loss_correct_letter", build=correct_letter_loss, inherit=("n_shots",)),
))
