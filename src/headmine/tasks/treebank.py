"""A small dependency treebank written for headmine (``data/treebank.txt``: 65 sentences, 472 words, hand-
checked head indices, Universal Dependencies conventions) as a probe batch, and a syntactic causal check.

Each row is one sentence (BOS + its tokens). Meta:
- ``word_of_token`` LongTensor [B, T]: the word each token belongs to (-1 on BOS and padding), from the
  fast tokenizer's character offsets;
- ``arcs``: B lists of (dependent, head, relation) with 0-based word indices (the root has no arc);
- ``relation_baseline``: run-wide tuple of (relation, accuracy) pairs: for the arcs of each relation,
  oriented from the later word to the earlier one, the best accuracy of one fixed offset (predict the
  word k places back, the same k for every arc of the relation), as Clark et al. 2019 and Voita et al.
  2019 compare heads with positional baselines.

The plan is ``wide`` so the scan captures the whole treebank in one forward (65 short sentences): the
syntactic-dependency score is a per-relation accuracy, counted over the whole treebank.

The causal check is subject-verb agreement (the ``agreement`` task: "The keys to the cabinet" -> " are"
vs " is"): minus the mean logit difference of the right verb form over the wrong one. Agreement needs
the verb position to find its subject across the attractor, which is what a head attending along
dependency arcs provides.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from importlib import resources
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.agreement import agreement
from headmine.tasks.base import TokenBatch, bos_prefix, check_n, pad_batch, pad_id, pad_rows
from headmine.tasks.probe import CapturePlan, EvalBatch, Evaluation, ProbeTask
from headmine.tasks.registry import register_probe

Sentence = tuple[tuple[str, ...], tuple[tuple[int, int, str], ...]]
"""(words, arcs) with arcs (dependent, head, relation), 0-based word indices."""

NO_SPACE_BEFORE = {".", ",", "?", "!", ";", ":"}


def parse_treebank(text: str) -> tuple[Sentence, ...]:
    """Sentences of ``word/head/relation`` lines (``#`` comments); TaskError on a malformed tree (a head out
    of range, not exactly one root, a cycle)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        words, heads, rels = [], [], []
        for item in line.split():
            word, head, rel = item.rsplit("/", 2) if item.count("/") >= 2 else (item, "", "")
            if not head.isdigit():
                raise TaskError(f"treebank line {n}: {item!r} is not word/head/relation")
            words.append(word)
            heads.append(int(head))
            rels.append(rel)
        if any(h > len(words) for h in heads) or heads.count(0) != 1:
            raise TaskError(f"treebank line {n}: a head index is out of range or the root is not unique")
        for start in range(1, len(words) + 1):  # walk up from every word: the root must be reached
            seen, w = set(), start
            while w != 0:
                if w in seen:
                    raise TaskError(f"treebank line {n}: the heads form a cycle through word {w}")
                seen.add(w)
                w = heads[w - 1]
        arcs = tuple((d, heads[d] - 1, rels[d]) for d in range(len(words)) if heads[d] != 0)
        out.append((tuple(words), arcs))
    return tuple(out)


@lru_cache(maxsize=1)
def treebank_sentences() -> tuple[Sentence, ...]:
    return parse_treebank(resources.files("headmine.tasks").joinpath("data/treebank.txt").read_text(encoding="utf-8"))


def sentence_text(words: tuple[str, ...]) -> tuple[str, list[tuple[int, int]]]:
    """The sentence as text and each word's character span."""
    text, spans = "", []
    for w in words:
        if text and w not in NO_SPACE_BEFORE:
            text += " "
        spans.append((len(text), len(text) + len(w)))
        text += w
    return text, spans


def relation_baseline(sentences: tuple[Sentence, ...]) -> tuple[tuple[str, float], ...]:
    """(relation, best fixed-offset accuracy) over arcs oriented from the later word to the earlier."""
    offsets: dict[str, Counter[int]] = {}
    for _, arcs in sentences:
        for d, h, rel in arcs:
            offsets.setdefault(rel, Counter())[abs(d - h)] += 1
    return tuple(sorted((rel, max(c.values()) / sum(c.values())) for rel, c in offsets.items()))


def treebank(tokenizer: Any, *, n: int = 65, seed: int = 0, prepend_bos: bool = True) -> TokenBatch:
    """The first ``n`` treebank sentences (all 65 by default; ``seed`` is unused: the set is fixed)."""
    check_n(n)
    sentences = treebank_sentences()[:n]
    if not getattr(tokenizer, "is_fast", False):
        raise TaskError("the treebank needs a fast tokenizer (character offsets)", "load the fast tokenizer")
    prefix = bos_prefix(tokenizer, prepend_bos)
    rows, word_rows, texts = [], [], []
    for words, _ in sentences:
        text, spans = sentence_text(words)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        owner = []
        for a, b in enc["offset_mapping"]:
            hit = [i for i, (s, e) in enumerate(spans) if a < e and b > s]
            owner.append(hit[-1] if hit else -1)
        if set(range(len(words))) - set(owner):
            raise TaskError(f"a word of {text!r} maps to no token", "use a tokenizer with character offsets")
        rows.append(prefix + list(enc["input_ids"]))
        word_rows.append([-1] * len(prefix) + owner)
        texts.append(text)
    ids, mask = pad_batch(rows, pad_id(tokenizer))
    meta = {"word_of_token": pad_rows(word_rows, ids.shape[1], -1, torch.long),
            "arcs": [list(arcs) for _, arcs in sentences],
            "relation_baseline": relation_baseline(sentences)}
    return TokenBatch(input_ids=ids, attention_mask=mask, meta=meta, texts=texts, task="treebank",
                      params={"n": n, "prepend_bos": prepend_bos})


def minus_agreement_logit_diff(tokenizer: Any, *, n: int, seed: int, **params: Any) -> EvalBatch:
    """Minus the mean logit(right verb form) - logit(wrong form) at the end of agreement prompts."""
    batch = agreement(tokenizer, n=max(n, 16), seed=seed, **params).clean_batch()
    rows = torch.arange(len(batch))
    end, right, wrong = batch.meta["end_pos"], batch.meta["target_id"], batch.meta["wrong_id"]

    def measure(logits: torch.Tensor) -> float:
        last = logits[rows, end.to(logits.device)].float()
        return float(-(last[rows, right] - last[rows, wrong]).mean())

    return EvalBatch(batch=batch, measure=measure)


PROBE = register_probe(ProbeTask(
    name="treebank", build=treebank, plan=CapturePlan(wide=True),
    evaluation=Evaluation(metric="minus_agreement_logit_diff", build=minus_agreement_logit_diff),
))
