"""Subword merge heads (survey: Subword Merge Head): a word's later pieces attend to its earlier pieces.

Definition. Correia et al. 2019 (Adaptively Sparse Transformers, §5 analysis of head specialisation) describe a
"BPE-merging" head whose attention goes from a sub-word piece to the other pieces of the same word;
Ferrando & Voita 2024 (Information Flow Routes, analysis of specialised components) find "subword merging" heads in the bottom layers
of Llama 2 that route the earlier pieces of a word into its last piece. In a causal model only the
earlier pieces are visible, so:

``subword_merge`` = merge mass - previous-token mass at word starts, per sequence, where
- merge mass: over query rows that are a later piece of a split word, the attention on the earlier
  pieces of the same word, over the attention on every real key but the first (``target_mass``);
- previous-token mass at word starts: over query rows that START a word (the previous token then
  belongs to another word), the attention on the previous token, renormalised the same way.

The second term makes the score specific: a plain previous-token head puts the same mass on the
previous token whether or not it is a piece of the same word, and scores about 0; a head that
attends to the earlier pieces only when the word continues scores up to 1. Word boundaries come from
the tokenizer's character offsets (``annotated_text``), on a packaged text dense in rare long words
(``word_pieces``).

Causal check: mean-ablating the top heads should raise the next-token loss predicted from the later
pieces of split words (``word_pieces``: loss_after_piece) more than as many random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.token_targets import target_mass


def _meta(meta: Mapping[str, Any], key: str) -> torch.Tensor:
    if key not in meta:
        raise DetectorError(f"subword_merge needs the batch metadata {key!r}",
                            "run it on the word_pieces or annotated_text task")
    return torch.as_tensor(meta[key]).cpu()


def merge_target(word_id: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """Bool [b, T, T]: query i is a later piece of a word and key j < i an earlier piece of that word."""
    t = word_id.shape[1]
    same = (word_id[:, :, None] == word_id[:, None, :]) & (word_id[:, :, None] >= 0)
    return same & torch.ones(t, t, dtype=torch.bool).tril(-1) & continuation.bool()[:, :, None]


def previous_at_starts(word_start: torch.Tensor) -> torch.Tensor:
    """Bool [b, T, T]: query i starts a word and key j = i - 1."""
    b, t = word_start.shape
    out = torch.zeros(b, t, t, dtype=torch.bool)
    idx = torch.arange(1, t)
    out[:, idx, idx - 1] = word_start.bool()[:, 1:]
    return out


def subword_merge_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Merge mass at later pieces minus previous-token mass at word starts (see the module docstring)."""
    word_id, cont, start = _meta(meta, "word_id"), _meta(meta, "continuation"), _meta(meta, "word_start")
    merge = target_mass(record, meta, merge_target(word_id, cont), detector="subword_merge")
    prev = target_mass(record, meta, previous_at_starts(start), detector="subword_merge")
    # a head with no attention on real keys at word starts (all on the sink) puts nothing on the previous token
    return BatchScores(merge.values - prev.values.nan_to_num(0.0), non_first_mass=merge.non_first_mass)


DETECTOR = register(Detector(
    name="subword_merge", head_type="Subword Merge Head", task="word_pieces", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="word_pieces"), score=subword_merge_score, threshold=0.3,
    definition="attention from a word's later pieces to its earlier pieces, minus previous-token attention "
               "at word starts (key 0 excluded)",
))
