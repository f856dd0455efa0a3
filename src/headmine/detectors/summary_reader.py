"""Summary reader heads (survey: Summary Reader): from the position that states the verdict, attention to
the summary positions (the comma and period after the sentiment phrases) rather than the sentiment words.

Definition. Tigges, Hollinsworth, Geiger and Nanda 2023 (Linear Representations of Sentiment in Large
Language Models, arXiv 2310.15154, §4 "summarization motif"): later heads read the sentiment that
summarizer heads (``sentiment_summarizer``) wrote at commas and periods, attending from the final position
to those summary tokens; patching the sentiment direction at the comma alone moves the output. The
attention half is scored here:

``summary_reader`` = per review of the packaged ``sentiment`` task, at its last token (which predicts
" good" / " bad"), the attention on its comma and period over the attention on every real key but the
first and the query itself (``target_mass``). Uniform attention scores about 2/16.

Causal check: ablating the top heads should lower the right-valence logit difference (``sentiment``:
minus_valence_logit_diff) more than as many random heads. Measured (bench/results/detectors_d.md): on SmolLM2
and Gemma 3 270M the top scorers are bottom-layer heads on punctuation (delimiter-like), and ablating them does
not lower the logit difference beyond random heads: Tigges et al.'s readers are found by path patching, which
an attention score alone does not reproduce on these models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.sentiment_summarizer import sentiment_meta
from headmine.detectors.token_targets import causal_keys, target_mass


def reader_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Renormalised attention from each review's last token to its comma and period."""
    summary, end_pos = sentiment_meta(meta, "summary_reader", ("summary", "end_pos"))
    b, t = summary.shape
    end = torch.zeros(b, t, dtype=torch.bool)
    end[torch.arange(b), end_pos.long()] = True
    keys = causal_keys(record.attention_mask, drop_current=True)
    target = keys & summary.bool()[:, None, :] & end[:, :, None]
    return target_mass(record, meta, target, keys=keys, rows=end, detector="summary_reader")


DETECTOR = register(Detector(
    name="summary_reader", head_type="Summary Reader", task="sentiment",
    sites=frozenset({Site.PATTERN}), causal=CausalCheckSpec(task="sentiment"), score=reader_score,
    threshold=0.4, definition="attention from the verdict position to the comma and period after the "
                              "sentiment phrases (first key and query excluded)",
))
