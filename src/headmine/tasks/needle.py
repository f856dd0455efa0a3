"""Needle in a haystack (retrieval heads): corpus sentences with one invented fact inserted at
several depths, then the question.

The scan decodes greedily (retrieval heads are found while the model copies the answer) and keeps
the prompts the model got right; the causal check measures the loss on the answer tokens given the
prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch, bos_prefix, check_n, encode_marked, pad_batch, pad_id, rng
from headmine.tasks.corpus import corpus_sentences
from headmine.tasks.probe import CapturePlan, Decoding, EvalBatch, Evaluation, ProbeTask, loss_on
from headmine.tasks.registry import register_probe

NEEDLE_ADJECTIVES = ("blue", "silver", "golden", "green", "purple", "crimson", "quiet", "hidden",
                     "northern", "ancient", "copper", "velvet", "frozen", "painted", "distant", "amber")
NEEDLE_NOUNS = ("lighthouse", "teapot", "lantern", "violin", "umbrella", "compass", "kettle", "bicycle",
                "tower", "garden", "bridge", "harbor", "mirror", "carriage", "observatory", "orchard")


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

    Long contexts (1K-8K tokens and more): the haystack cycles through the corpus (about 4,400 SmolLM2
    tokens, so an 8K haystack repeats its sentences about twice; up to 10 cycles), from a random start
    sentence per needle. Only the needle is new; a repeated sentence is filler the question never asks.

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
    prefix = bos_prefix(tokenizer, prepend_bos)
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


def retrieved(meta: Mapping[str, Any], generated: Sequence[int]) -> bool:
    """The model got the needle: more than half of the answer's tokens are among the generated ones."""
    answer = list(meta["answer_ids"][0])
    return sum(1 for t in answer if t in generated) / max(1, len(answer)) > 0.5


def answer_loss(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Rows = prompt + answer; the loss on the answer tokens given the prompt."""
    probe = needle(tokenizer, n=n, seed=seed, **params)
    rows, weights = [], []
    for i in range(len(probe)):
        ids = probe.input_ids[i, : int(probe.lengths[i])].tolist()
        ans = list(probe.meta["answer_ids"][i])
        rows.append(ids + ans)
        weights.append([0] * len(ids) + [1] * len(ans))
    input_ids, mask = pad_batch(rows, pad_id(tokenizer))
    weight = torch.zeros_like(input_ids)
    for i, ws in enumerate(weights):
        weight[i, : len(ws)] = torch.tensor(ws)
    batch = TokenBatch(input_ids=input_ids, attention_mask=mask, task="needle_answer", params=probe.params)
    return loss_on(batch, weight)


PROBE = register_probe(ProbeTask(
    name="needle", build=needle, defaults={"n": 2, "context_lengths": (192,), "depths": (0.25, 0.75)},
    plan=CapturePlan(query_rows="last", decoding=Decoding(success=retrieved)),
    evaluation=Evaluation(metric="loss_answer", build=answer_loss,
                          params={"n": 1, "context_lengths": (192,), "depths": (0.25, 0.75)}),
))
