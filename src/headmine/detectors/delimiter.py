"""Delimiter heads (survey: Delimiter Head): attention to separator tokens, told apart from the sink.

Definition. Clark et al. 2019 (What does BERT look at?, §3) measure the share of each head's attention
on [SEP], [CLS] and punctuation (periods, commas), and Pande et al. 2021 (The Heads Hypothesis, §3)
define a delimiter role as a head whose attention on such separator tokens is significantly high. A
causal model has no [SEP]; its first token draws attention for another reason (the attention sink, see
``attention_sink``), so here the first key is never a delimiter and is left out of the denominator:

``delimiter`` = per query row that has an earlier delimiter (punctuation or whitespace-only token, from
``annotated_text``), the attention on earlier delimiter tokens over the attention on every real key
but the first and the query itself, averaged over those rows (``target_mass``'s renormalised mass; the
row's non-first-token mass is stored beside it, so a sink head that leaks a little onto a comma is not
labelled). A uniform head scores the share of delimiters among the keys (about 0.1 on the corpus).

Causal check: next-token loss on natural text (``annotated_text``).
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


def delimiter_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Renormalised attention on earlier delimiter tokens (first key and the query itself excluded)."""
    if "delimiter" not in meta:
        raise DetectorError("delimiter needs the batch metadata 'delimiter'", "run it on the annotated_text task")
    delim = torch.as_tensor(meta["delimiter"]).cpu().bool()
    keys = causal_keys(record.attention_mask, drop_current=True)
    return target_mass(record, meta, keys & delim[:, None, :], keys=keys, detector="delimiter")


DETECTOR = register(Detector(
    name="delimiter", head_type="Delimiter Head", task="annotated_text", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="annotated_text"), score=delimiter_score, threshold=0.5,
    definition="attention on earlier punctuation / separator tokens (first key and the query excluded)",
))
