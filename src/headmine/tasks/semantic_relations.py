"""Knowledge-graph relations in context, for semantic induction heads (Ren et al. 2024, "Identifying
Semantic Induction Heads to Understand In-Context Learning", arXiv 2402.13055): each prompt states three
facts of one relation in sentences written for headmine (the head entity and, after it, the tail
entity), then asks for the tail of one of them:

    "One city in Italy is Rome. One city in France is Paris. One city in Spain is Madrid. The capital of
    France is" -> " Paris"

The head token (the subject) and the tail token are both in context when the answer is predicted; a
semantic induction head attends from the last token to the head token and its OV circuit raises the
related tail among the tokens in context. Facts come from the packaged relation files of
``tasks.factual`` (answers that are one token here). The causal check measures the cross-entropy of the
tail at the last token.
"""

from __future__ import annotations

from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, check_n, encode_prompt, pad_batch, pad_id, rng, single_token_id
from headmine.tasks.factual import builtin_relation
from headmine.tasks.probe import EvalBatch, Evaluation, ProbeTask
from headmine.tasks.registry import register_probe

SENTENCES = {
    # relation: (context sentence with the head then the tail, question that asks for the tail)
    "country_capital": ("One city in {subject} is {answer}.", "The capital of {subject} is"),
    "country_language": ("In {subject} many people speak {answer}.", "The official language of {subject} is"),
    "object_colour": ("Yesterday I saw {subject} that was {answer}.", "The color of {subject} is"),
}
N_FACTS = 3


def semantic_relations(tokenizer: Any, *, n: int = 24, seed: int = 0, prepend_bos: bool = True) -> TokenBatch:
    """``n`` prompts cycling over the relations of ``SENTENCES``: three facts, then the question.

    Meta: ``head_pos`` LongTensor [B, 2] (last subject token in the question and in its fact sentence),
    ``tail_pos`` [B] (the tail token in the fact sentence), ``tail_id`` [B], ``end_pos`` [B], ``relation``
    (list of names).
    """
    check_n(n)
    r = rng(seed)
    rels = []
    for name in SENTENCES:
        rel = builtin_relation(name, tokenizer)
        # the tail must be a word of its own: not in the subject ("an orange" that was "orange")
        pairs = [p for p in rel.pairs if p[1][:1].isalpha() and p[1].lower() not in p[0].lower().split()]
        if len({a for _, a in pairs}) < N_FACTS:
            raise TaskError(f"relation {name!r} has fewer than {N_FACTS} one-token answers in this tokenizer")
        rels.append((name, pairs))
    rows, metas, texts = [], [], []
    for i in range(n):
        name, pairs = rels[i % len(rels)]
        fact, question = SENTENCES[name]
        target = pairs[r.randrange(len(pairs))]
        others = [p for p in pairs if p[1] != target[1] and p[0] != target[0]]
        facts = [target, *r.sample(others, N_FACTS - 1)]
        r.shuffle(facts)
        parts: list[Any] = []
        for subject, answer in facts:
            head, tail = fact.split("{subject}")
            mid, end = tail.split("{answer}")
            own = (subject, answer) == target
            parts += [head, ("subject_ctx", subject) if own else subject, mid.rstrip(" ") + " ",
                      ("tail", answer) if own else answer, end + " "]
        q_head, q_tail = question.split("{subject}")
        parts += [q_head, ("subject", target[0]), q_tail]
        text, ids, spans = encode_prompt(tokenizer, parts, prepend_bos=prepend_bos)
        rows.append(ids)
        texts.append(text)
        metas.append({"head_pos": [spans["subject"][1] - 1, spans["subject_ctx"][1] - 1],
                      "tail_pos": spans["tail"][0], "tail_id": single_token_id(tokenizer, " " + target[1]),
                      "relation": name})
    ids_t, mask = pad_batch(rows, pad_id(tokenizer))
    tail_pos = torch.tensor([m["tail_pos"] for m in metas], dtype=torch.long)
    tail_id = torch.tensor([m["tail_id"] for m in metas], dtype=torch.long)
    if not torch.equal(ids_t[torch.arange(n), tail_pos], tail_id):
        raise TaskError("a tail answer is not one token where it stands in the prompt", "check the sentence templates")
    return TokenBatch(
        input_ids=ids_t, attention_mask=mask,
        meta={"head_pos": torch.tensor([m["head_pos"] for m in metas], dtype=torch.long), "tail_pos": tail_pos,
              "tail_id": tail_id, "end_pos": mask.sum(1) - 1, "relation": [m["relation"] for m in metas]},
        texts=texts, task="semantic_relations", params={"n": n, "seed": seed, "prepend_bos": prepend_bos},
    )


def tail_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Mean cross-entropy of the tail at the last token (higher = worse)."""
    batch = semantic_relations(tokenizer, n=n, seed=seed, **params)
    end, tail = batch.meta["end_pos"], batch.meta["tail_id"]

    def measure(logits: torch.Tensor) -> float:
        rows = torch.arange(logits.shape[0], device=logits.device)
        lp = logits[rows, end.to(logits.device)].float().log_softmax(-1)
        return float(-lp[rows, tail.to(logits.device)].mean())

    return EvalBatch(batch=batch, measure=measure)


PROBE = register_probe(ProbeTask(
    name="semantic_relations", build=semantic_relations, defaults={"n": 24},
    evaluation=Evaluation(metric="loss_tail", build=tail_loss),
))
