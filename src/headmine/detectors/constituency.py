"""Constituency grammar inducing heads (survey: Constituency Grammar Inducing Head): a head whose attention
distributions, read as syntactic distances between adjacent words, split sentences into phrases better
than the right-branching baseline does.

Definition. Kim, Choi, Edmiston, Bae and Lee 2020 (Are Pre-trained Language Models Aware of Phrases?
Simple but Strong Baselines for Grammar Induction, ICLR 2020, arXiv 2002.00737, §3.1-3.2; used per head by
Li et al. 2020, Heads-up!, arXiv 2010.09517, and by Luo 2021 for BERT's heads): for one head, the syntactic
distance between adjacent words w_i, w_{i+1} is the distance between their attention distributions,
``d_i = JSD(g(w_i), g(w_{i+1}))`` (Jensen-Shannon; Kim et al. also use Hellinger, ``HELLINGER`` here); the
tree is built top-down by splitting a span at its largest distance, recursively (a binary tree); the
head is scored by unlabeled span F1 against gold constituents, per sentence and averaged (sentence-level
F1), ignoring the trivial spans (single words, the whole sentence), punctuation removed, as Kim et al.
evaluate on the WSJ.

Here, on the packaged treebank (``treebank``: 65 hand-checked UD sentences):
- word-level attention as Clark et al. 2019 (rows averaged over a word's tokens, keys summed over a
  word's tokens; BOS belongs to no word), each row renormalised over the words (the causal model's
  attention sink on BOS would otherwise make every distribution near-identical); a causal head's row for
  w_i covers words <= i, which the JSD compares as distributions over the sentence's words;
- gold constituents: no bracketed set ships, so the gold spans are derived from the dependency trees:
  each word's subtree yield (the word and all its descendants) is one constituent when it is contiguous
  (projective), punctuation words removed before the spans are read (UD-derived constituents are flatter
  than Penn Treebank trees: "the big dog" is one span with no "big dog" inside, so a binary tree's recall
  is at most 1 while its precision is bounded below 1 for every parser, right-branching included);
- ``constituency_grammar`` = mean over sentences of (F1 of the head's tree - F1 of the right-branching
  tree), on the same sentences (those with >= 3 non-punctuation words and a non-trivial gold span).

Threshold (the margin over right-branching). On this treebank the right-branching baseline's sentence
F1 is 0.264 with a standard deviation of 0.160 over its 65 sentences (left-branching: 0.255; trees split
at random distances: 0.274, standard deviation 0.028 over 50 draws, highest 0.332). A head is labelled
when it beats right-branching by ``MARGIN`` = 0.08 = half the baseline's per-sentence standard deviation
(an effect of d = 0.5 on the paired sentence F1s; two standard errors of the baseline mean would be only
0.040, which 7 of the 50 random-tree draws reach), so no random tree of the 50 reaches it
(``tests/unit/test_detectors_d.py`` re-derives the baseline numbers).

Causal check: subject-verb agreement across an attractor (``treebank``'s evaluation): finding the subject
phrase "The keys to the cabinet" as a constituent is what lets the verb agree with "keys", not "cabinet";
ablating the top heads should hurt it more than as many random heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    empty_scores,
    n_layers_heads,
    register,
    require_site,
)
from headmine.detectors.syntactic_words import syntax_meta, word_attention

MARGIN = 0.08
"""F1 over right-branching at which a head is labelled: half the standard deviation of the baseline's
sentence F1 on the packaged treebank (see the module docstring)."""

PUNCT = "punct"
Span = tuple[int, int]


def kept_words(n_words: int, arcs: Sequence[tuple[int, int, str]]) -> list[int]:
    """Indices of the words a tree is built over: all but those attached as punctuation."""
    punct = {d for d, _, rel in arcs if rel == PUNCT}
    return [w for w in range(n_words) if w not in punct]


def gold_spans(n_words: int, arcs: Sequence[tuple[int, int, str]]) -> set[Span]:
    """Non-trivial constituent spans [start, end) over the kept (non-punctuation) words: each word's
    subtree yield when it is contiguous, of length >= 2 and shorter than the sentence."""
    kept = kept_words(n_words, arcs)
    index = {w: i for i, w in enumerate(kept)}
    children: dict[int, list[int]] = {}
    for d, h, _ in arcs:
        children.setdefault(h, []).append(d)
    out: set[Span] = set()
    for w in kept:
        stack, yield_ = [w], []
        while stack:
            v = stack.pop()
            if v in index:
                yield_.append(index[v])
            stack.extend(children.get(v, ()))
        lo, hi = min(yield_), max(yield_) + 1
        if hi - lo == len(yield_) and 2 <= hi - lo < len(kept):
            out.add((lo, hi))
    return out


def greedy_spans(distances: Sequence[float]) -> set[Span]:
    """Spans [start, end) of length >= 2 of the binary tree that splits each span top-down at its largest
    distance (``distances[i]`` between word i and word i+1; the first maximum wins a tie)."""
    out: set[Span] = set()
    todo = [(0, len(distances) + 1)]
    while todo:
        lo, hi = todo.pop()
        if hi - lo < 2:
            continue
        out.add((lo, hi))
        k = max(range(lo, hi - 1), key=lambda i: (distances[i], -i))
        todo += [(lo, k + 1), (k + 1, hi)]
    return out


def right_branching_spans(n: int) -> set[Span]:
    """Spans of the right-branching tree over n words: (w0 (w1 (... (w_{n-2} w_{n-1}))))."""
    return {(i, n) for i in range(n - 1)}


def span_f1(pred: set[Span], gold: set[Span], n: int) -> float:
    """Unlabeled F1 of ``pred`` against ``gold`` with the whole-sentence span (0, n) left out."""
    pred = {s for s in pred if s != (0, n)}
    gold = {s for s in gold if s != (0, n)}
    hit = len(pred & gold)
    if not hit:
        return 0.0
    p, r = hit / len(pred), hit / len(gold)
    return 2 * p * r / (p + r)


def jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions along the last axis."""
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-30).log() - m.clamp_min(1e-30).log()), torch.zeros_like(a)).sum(-1)

    return (kl(p) + kl(q)) / 2


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance between distributions along the last axis."""
    return ((p.sqrt() - q.sqrt()) ** 2).sum(-1).clamp_min(0).sqrt() / 2**0.5


DISTANCES = {"jsd": jsd, "hellinger": hellinger}


def sentence_f1s(record: CaptureRecord, meta: Mapping[str, Any], *, distance: str = "jsd",
                 detector: str = "constituency_grammar") -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Per layer: F1 [b, h] of each head's tree per sentence (NaN where a sentence is not scored), and the
    right-branching F1 [b] of the same sentences."""
    if distance not in DISTANCES:
        raise DetectorError(f"unknown distance {distance!r}", f"use one of {', '.join(DISTANCES)}")
    dist = DISTANCES[distance]
    word_of_token, arcs = syntax_meta(meta, detector)
    b = word_of_token.shape[0]
    sent = []  # (kept word indices, gold spans) per sentence, None if not scored
    rb = torch.full((b,), float("nan"), dtype=torch.float64)
    for i in range(b):
        n_words = int(word_of_token[i].max()) + 1
        kept, gold = kept_words(n_words, arcs[i]), gold_spans(n_words, arcs[i])
        if len(kept) < 3 or not gold:
            sent.append(None)
            continue
        sent.append((kept, gold))
        rb[i] = span_f1(right_branching_spans(len(kept)), gold, len(kept))
    out: dict[int, torch.Tensor] = {}
    for layer, a in require_site(record, Site.PATTERN, detector).items():
        w_att = word_attention(record, a.detach().cpu().float(), word_of_token).double()  # [b, h, W, W]
        w_att = w_att / w_att.sum(-1, keepdim=True).clamp_min(1e-30)
        f1 = torch.full((b, w_att.shape[1]), float("nan"), dtype=torch.float64)
        for i, s in enumerate(sent):
            if s is None:
                continue
            kept, gold = s
            rows = w_att[i][:, kept]  # [h, n, W]
            d = dist(rows[:, :-1], rows[:, 1:])  # [h, n-1]
            for h in range(rows.shape[0]):
                f1[i, h] = span_f1(greedy_spans(d[h].tolist()), gold, len(kept))
        out[layer] = f1
    return out, rb


def constituency_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Per sentence and head: the head tree's span F1 minus the right-branching tree's."""
    n_layers, n_heads = n_layers_heads(record, meta)
    f1s, rb = sentence_f1s(record, meta)
    out = empty_scores(rb.shape[0], n_layers, n_heads)
    for layer, f1 in f1s.items():
        out[:, layer, record.heads[layer]] = f1 - rb[:, None]
    return BatchScores(out)


DETECTOR = register(Detector(
    name="constituency_grammar", head_type="Constituency Grammar Inducing Head", task="treebank",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="treebank"), score=constituency_score,
    threshold=MARGIN, definition="sentence-level span F1 of the tree split top-down at the largest JSD between "
                                 "adjacent words' attention distributions, minus the right-branching tree's F1 "
                                 "(gold: projective subtree yields of the treebank's UD trees)",
))
