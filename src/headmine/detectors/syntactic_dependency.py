"""Syntactic dependency heads (survey: Syntactic Dependency Head): a head whose strongest attention
follows one dependency relation better than any fixed offset does.

Definition. Htut et al. 2019 (Do Attention Heads in BERT Track Syntactic Dependencies?, §3 "maximum
attention weights") and Clark et al. 2019 (What does BERT look at?, §4.2) take, for each word, the word
a head attends to most as the predicted partner, and report per dependency relation the accuracy of
the best head against a fixed-offset baseline (predict the word k places away, the best k per relation).
Here, on the packaged treebank (``treebank``; word-level attention as Clark et al.; arcs oriented from
the later word to the earlier one, since a causal model sees only earlier words):

``syntactic_dependency`` = max over relations with at least ``MIN_ARCS`` arcs of (accuracy of the head
on the relation's arcs - the relation's best fixed-offset accuracy), counted over the whole treebank (the
task's plan captures it in one forward); ``relation_table`` gives every relation's accuracy.

Causal check: subject-verb agreement across an attractor (``treebank``'s evaluation: minus the agreement
logit difference); ablating the top heads should hurt it more than as many random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

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

MIN_ARCS = 10


def relation_hits(record: CaptureRecord, meta: Mapping[str, Any], detector: str = "syntactic_dependency"
                  ) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer: relation -> Bool [n_arcs, h], whether each head's top earlier word is the arc's partner."""
    word_of_token, arcs = syntax_meta(meta, detector)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for layer, a in require_site(record, Site.PATTERN, detector).items():
        best = best_earlier_word(word_attention(record, a.detach().cpu().float(), word_of_token))  # [b, h, W]
        per: dict[str, list[torch.Tensor]] = {}
        for b, row in enumerate(arcs):
            for d, h, rel in row:
                later, earlier = max(d, h), min(d, h)
                per.setdefault(rel, []).append(best[b, :, later] == earlier)
        out[layer] = {rel: torch.stack(v) for rel, v in per.items()}
    return out


def relation_table(record: CaptureRecord, meta: Mapping[str, Any]) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer: relation -> accuracy per head [h] (all relations, whatever their arc count)."""
    return {layer: {rel: v.double().mean(0) for rel, v in rels.items()}
            for layer, rels in relation_hits(record, meta).items()}


def syntactic_dependency_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """One value per head for the batch: the best margin of a relation's accuracy over its offset baseline."""
    n_layers, n_heads = n_layers_heads(record, meta)
    baseline = dict(meta.get("relation_baseline", ()))
    out = empty_scores(1, n_layers, n_heads)
    for layer, rels in relation_hits(record, meta).items():
        margins = [v.double().mean(0) - baseline.get(rel, 0.0) for rel, v in rels.items() if v.shape[0] >= MIN_ARCS]
        if margins:
            out[0, layer, record.heads[layer]] = torch.stack(margins).max(0).values
    return BatchScores(out)


DETECTOR = register(Detector(
    name="syntactic_dependency", head_type="Syntactic Dependency Head", task="treebank",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="treebank"), score=syntactic_dependency_score,
    threshold=0.1, definition="best margin, over dependency relations, of max-attention accuracy over the "
                              "relation's best fixed-offset baseline",
))
