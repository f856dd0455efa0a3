"""Apostrophe heads (survey: Apostrophe Head): attention to apostrophe tokens.

Definition. Barbero et al. 2024 (Round and Round We Go!, the Gemma 7B analysis) show a head whose
attention goes to apostrophe tokens and which relies on the lowest RoPE frequencies (semantic rather
than positional channels). The paper shows it from attention maps and frequency usage; the operational
score here is ours, in the same terms:

``apostrophe`` = per query row that has an earlier apostrophe token ("'s", "'t", "n't", ...: a token
holding ' or its typographic form), the attention on earlier apostrophe tokens over the attention on
every real key but the first and the query itself (``target_mass``), averaged over rows; text: the
packaged ``apostrophes`` task. Uniform attention scores the share of apostrophe tokens among the keys
(about 0.1).

Causal check: ablating the top heads should raise the next-token loss on the three tokens after each
apostrophe token (``apostrophes``: loss_after_apostrophe) more than as many random heads.
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


def apostrophe_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Renormalised attention on earlier apostrophe tokens (first key and the query excluded)."""
    if "apostrophe" not in meta:
        raise DetectorError("apostrophe needs the batch metadata 'apostrophe'", "run it on the apostrophes task")
    flag = torch.as_tensor(meta["apostrophe"]).cpu().bool()
    keys = causal_keys(record.attention_mask, drop_current=True)
    return target_mass(record, meta, keys & flag[:, None, :], keys=keys, detector="apostrophe")


DETECTOR = register(Detector(
    name="apostrophe", head_type="Apostrophe Head", task="apostrophes", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="apostrophes"), score=apostrophe_score, threshold=0.5,
    definition="attention on earlier apostrophe tokens (first key and the query excluded)",
))
