"""Sentiment summarizer heads (survey: Sentiment Summarizer): from a summary position (the comma or period
after a sentiment phrase), attention to the sentiment words before it.

Definition. Tigges, Hollinsworth, Geiger and Nanda 2023 (Linear Representations of Sentiment in Large
Language Models, arXiv 2310.15154, §4 "summarization motif", ToyMovieReview circuit): sentiment is not only
carried by the valenced words but summarised at later positions without a valence of their own (commas,
periods): summarizer heads attend from those positions to the adjective and verb and write the sentiment
direction there, and later heads read it from the summary position (``summary_reader``). The paper finds
the heads by path patching and attention; the attention half is scored here (the direction they write is
not: that needs a fitted sentiment direction):

``sentiment_summarizer`` = per review of the packaged ``sentiment`` task, at its comma (after the
adjective) and its period (after the verb), the attention on the earlier sentiment-word tokens over the
attention on every real key but the first and the query itself (``target_mass``), averaged over the two
rows. Uniform attention scores 1/8 to 1/5 (one or two sentiment words among 5-12 earlier keys).

Causal check: ablating the top heads should lower the right-valence logit difference at the end (``sentiment``:
minus_valence_logit_diff) more than as many random heads. Measured (bench/results/detectors_d.md): SmolLM2 and
Gemma 3 270M do the task (valence accuracy 0.88 / 0.81) and have heads with the pattern (44 / 18 at the 0.4
threshold), but ablating the top five does not lower the logit difference beyond random five-head sets: the
type is found by its attention here, not confirmed causally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.token_targets import causal_keys, target_mass


def sentiment_meta(meta: Mapping[str, Any], detector: str, keys: tuple[str, ...]) -> list[torch.Tensor]:
    """The named batch-meta tensors, DetectorError when one is missing."""
    for key in keys:
        if key not in meta:
            raise DetectorError(f"{detector} needs the batch metadata {key!r}", "run it on the sentiment task")
    return [torch.as_tensor(meta[key]).cpu() for key in keys]


def summarizer_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Renormalised attention from the comma and period rows to the earlier sentiment-word tokens."""
    sentiment, summary = sentiment_meta(meta, "sentiment_summarizer", ("sentiment", "summary"))
    keys = causal_keys(record.attention_mask, drop_current=True)
    target = keys & sentiment.bool()[:, None, :] & summary.bool()[:, :, None]
    return target_mass(record, meta, target, keys=keys, rows=summary.bool(), detector="sentiment_summarizer")


DETECTOR = register(Detector(
    name="sentiment_summarizer", head_type="Sentiment Summarizer", task="sentiment",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="sentiment"), score=summarizer_score,
    threshold=0.4, definition="attention from the comma/period after a sentiment phrase to its sentiment words "
                              "(first key and query excluded)",
))
