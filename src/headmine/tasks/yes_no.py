"""Yes/no questions whose instruction lists the two answers (the binary-decision setting of Yu et al. 2024,
"Correcting Negative Bias in Large Language Models through Negative Attention Score Alignment", arXiv
2408.00137): "Question: Is snow cold? Answer Yes or No.\\nAnswer:", the model's next token is " Yes" or " No".

The questions (``data/yes_no.tsv``) are simple facts written for headmine, as many true as false, so a bias
towards one answer cannot come from the data. The order of the two options in the instruction alternates
from prompt to prompt ("Yes or No" / "No or Yes", seeded), so a head that attends to the second option, or to
the last word of the instruction, is not mistaken for a head that attends to "No". Each prompt may start
with ``n_shots`` answered questions (other items) to show the format.

Meta: ``yes_pos``/``no_pos`` LongTensor [B] (positions of the option tokens in the open question's
instruction), ``yes_id``/``no_id`` (ids of " Yes"/" No", the answers), ``answer_is_no`` BoolTensor [B],
``end_pos`` LongTensor [B]. The capture plan reads the last token (where the answer is predicted). The causal
evaluation measures the negative bias: the mean over prompts of log P(" No") - log P(" Yes") at the last token.
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

ANSWERS = ("Yes", "No")


@lru_cache(maxsize=1)
def yes_no_items() -> tuple[tuple[str, bool], ...]:
    """(question, answer is No) from the packaged ``data/yes_no.tsv``."""
    text = resources.files("headmine.tasks").joinpath("data", "yes_no.tsv").read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        question, _, answer = line.partition("\t")
        if answer not in ANSWERS:
            raise TaskError(f"yes_no.tsv line {line!r} needs a question, a tab and Yes or No")
        out.append((question, answer == "No"))
    return tuple(out)


def _block(question: str, no_first: bool, answer: str | None) -> list[Any]:
    """Prompt parts of one question; the option words of the instruction are labelled YES and NO."""
    first, second = (("NO", " No"), ("YES", " Yes")) if no_first else (("YES", " Yes"), ("NO", " No"))
    parts: list[Any] = [f"Question: {question} Answer", first, " or", second, ".\nAnswer:"]
    if answer is not None:
        parts.append(f" {answer}\n\n")
    return parts


def yes_no(tokenizer: Any, *, n: int = 32, seed: int = 0, n_shots: int = 2, prepend_bos: bool = True) -> TokenBatch:
    """``n`` prompts: ``n_shots`` answered questions (one Yes and one No when there are two), then an open one."""
    check_n(n)
    items = yes_no_items()
    if n_shots < 0 or n_shots >= len(items):
        raise TaskError(f"n_shots={n_shots} must lie in 0..{len(items) - 1}")
    yes_id, no_id = (single_token_id(tokenizer, " " + a) for a in ANSWERS)
    r = rng(seed)
    perm = list(range(len(items)))
    r.shuffle(perm)
    rows, metas, texts = [], [], []
    for i in range(n):
        q_index = perm[i % len(items)]
        others = [j for j in range(len(items)) if j != q_index]
        by_answer = [[j for j in others if items[j][1] == no] for no in (False, True)]
        shots = [r.choice(by_answer[k % 2]) for k in range(n_shots)]
        r.shuffle(shots)
        parts: list[Any] = []
        for j in shots:
            sq, s_no = items[j]
            parts += [p if isinstance(p, str) else p[1] for p in _block(sq, r.random() < 0.5, ANSWERS[int(s_no)])]
        question, is_no = items[q_index]
        text, ids, spans = encode_prompt(tokenizer, parts + _block(question, i % 2 == 1, None), prepend_bos=prepend_bos)
        for label in ("YES", "NO"):
            start, end = spans[label]
            if end - start != 1:
                raise TaskError(f"the option {label.title()!r} is {end - start} tokens in this tokenizer, not one",
                                "the yes_no task needs ' Yes' and ' No' to be single tokens")
        rows.append(ids)
        texts.append(text)
        metas.append({"yes_pos": spans["YES"][0], "no_pos": spans["NO"][0], "answer_is_no": is_no})
    ids_t, mask = pad_batch(rows, pad_id(tokenizer))
    return TokenBatch(
        input_ids=ids_t, attention_mask=mask,
        meta={"yes_pos": torch.tensor([m["yes_pos"] for m in metas], dtype=torch.long),
              "no_pos": torch.tensor([m["no_pos"] for m in metas], dtype=torch.long),
              "answer_is_no": torch.tensor([m["answer_is_no"] for m in metas], dtype=torch.bool),
              "yes_id": yes_id, "no_id": no_id, "end_pos": mask.sum(1) - 1},
        texts=texts, task="yes_no", params={"n": n, "seed": seed, "n_shots": n_shots, "prepend_bos": prepend_bos},
    )


def answer_logprobs(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """[B, 2] log-probabilities of " Yes" and " No" at each prompt's last token (full-vocabulary softmax)."""
    end = batch.meta["end_pos"].to(logits.device)
    last = logits[torch.arange(logits.shape[0], device=logits.device), end].float().log_softmax(-1)
    return last[:, [int(batch.meta["yes_id"]), int(batch.meta["no_id"])]]


def negative_bias(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Mean log P(" No") - log P(" Yes") at the answer position over balanced questions (the negative bias)."""
    batch = yes_no(tokenizer, n=n, seed=seed, **params)

    def measure(logits: torch.Tensor) -> float:
        lp = answer_logprobs(logits, batch)
        return float((lp[:, 1] - lp[:, 0]).mean())

    return EvalBatch(batch=batch, measure=measure)


PROBE = register_probe(ProbeTask(
    name="yes_no", build=yes_no, defaults={"n": 16}, plan=CapturePlan(query_rows="last"),
    evaluation=Evaluation(metric="no_minus_yes_logprob", build=negative_bias, inherit=("n_shots",)),
))
