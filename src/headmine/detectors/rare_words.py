"""Rare-words heads (survey: Rare Words Head): the head's maximum attention goes to the rarest token.

Definition. Voita et al. 2019 (Analyzing Multi-Head Self-Attention, §4.3 "rare words") call a head a
rare-words head when it assigns its maximum attention to the least frequent token of the sentence, with
frequencies from the training data, and report the fraction of sentences where it does. Here, in a
causal model, per query row i (i >= 3, so at least two earlier candidates): the rarest token among keys
1..i-1 is the target, and

``rare_words`` = fraction of those rows whose most-attended key among 1..i-1 is the target
(``argmax_hits``; the first key, the attention sink, and the query itself are left out).

Token frequency: the training corpus is not available, so the rank comes from the tokenizer: the token
id, which byte-level BPE vocabularies assign in merge order (a later merge is a rarer string;
``annotated_text``'s ``rarity``). Ties are broken towards the later position. A head that attends
uniformly scores about the mean of 1/(i-1); a previous-token head scores the fraction of rows whose
previous token happens to be the rarest (about 0.1 on SmolLM2's windows), which the threshold clears.

Causal check: next-token loss on natural text (``annotated_text``), as the paper's heads matter for
translation quality: ablating the top heads should cost more than as many random heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, register
from headmine.detectors.token_targets import argmax_hits, causal_keys


def rarest_target(rarity: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Bool [b, T, T]: for each query row, the allowed key with the highest rarity (later one on ties);
    rows with fewer than two allowed keys get none."""
    b, t = rarity.shape
    r = rarity.to(torch.float64)[:, None, :].expand(b, t, t)
    pos = torch.arange(t, dtype=torch.float64) * 1e-6  # later position wins a tie
    val = torch.where(keys, r + pos, torch.full_like(r, float("-inf")))
    best = val.argmax(-1)
    out = torch.zeros(b, t, t, dtype=torch.bool)
    out.scatter_(-1, best[..., None], True)
    return out & keys & (keys.sum(-1, keepdim=True) >= 2)


def rare_words_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Fraction of query rows whose max attention (keys 1..i-1) is on the rarest earlier token."""
    if "rarity" not in meta:
        raise DetectorError("rare_words needs the batch metadata 'rarity'", "run it on the annotated_text task")
    rarity = torch.as_tensor(meta["rarity"]).cpu()
    keys = causal_keys(record.attention_mask, drop_current=True) & (rarity >= 0)[:, None, :]
    return argmax_hits(record, meta, rarest_target(rarity, keys), keys=keys, detector="rare_words")


DETECTOR = register(Detector(
    name="rare_words", head_type="Rare Words Head", task="annotated_text", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="annotated_text"), score=rare_words_score, threshold=0.4,
    definition="fraction of rows whose max attention (keys 1..i-1) is on the rarest token (id = merge rank)",
))
