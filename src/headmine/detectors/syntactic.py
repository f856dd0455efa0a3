"""Syntactic heads (survey: Syntactic Head): a head whose most-attended earlier word is a syntactic
neighbour more often than the previous word is.

Definition. Chen et al. 2023 (Sudden Drops in the Loss, §2 "syntactic attention structure") measure a
head's syntax by how often a word's most-attended word is its parent or child in the dependency tree
(an unlabelled attachment score of max attention); Voita et al. 2019 (§4.2) call a head syntactic when
its max-attention accuracy beats the positional baseline by at least 10 points. Here, per treebank
sentence (word-level attention as Clark et al. 2019; only earlier words are visible in a causal model):

``syntactic`` = over words that have an earlier syntactic neighbour, the fraction whose most-attended
earlier word is a neighbour (parent or child), minus the fraction for which the PREVIOUS word is a
neighbour (the positional baseline: a previous-token head scores 0). Threshold 0.1, Voita's margin.

Causal check: subject-verb agreement (``treebank``'s evaluation), as ``syntactic_dependency``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headmine.capture.records import CaptureRecord
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
from headmine.detectors.syntactic_words import best_earlier_word, syntax_meta, word_attention


def syntactic_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Per sentence: neighbour hits of the max-attended earlier word minus the previous-word baseline."""
    word_of_token, arcs = syntax_meta(meta, "syntactic")
    n_layers, n_heads = n_layers_heads(record, meta)
    out = empty_scores(len(arcs), n_layers, n_heads)
    neighbours = []
    for row in arcs:
        nb: dict[int, set[int]] = {}
        for d, h, _ in row:
            nb.setdefault(max(d, h), set()).add(min(d, h))
        neighbours.append(nb)
    for layer, a in require_site(record, Site.PATTERN, "syntactic").items():
        best = best_earlier_word(word_attention(record, a.detach().cpu().float(), word_of_token))
        for b, nb in enumerate(neighbours):
            words = sorted(nb)
            if not words:
                continue
            hits = sum((best[b, :, w:w + 1] == best.new_tensor(sorted(nb[w]))).any(-1).double() for w in words)
            base = sum(float(w - 1 in nb[w]) for w in words)
            out[b, layer, record.heads[layer]] = (hits - base) / len(words)
    return BatchScores(out)


DETECTOR = register(Detector(
    name="syntactic", head_type="Syntactic Head", task="treebank", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="treebank"), score=syntactic_score, threshold=0.1,
    definition="how often the max-attended earlier word is a dependency neighbour, minus the previous-word baseline",
))
