"""Successor heads (Gould et al. 2023; survey: Successor Head, Latent Reasoning).

Succession score (methods 3.3): the effective OV circuit on single tokens,
``f(t) = W_U . norm_final( norm_l(W_EE[t]) W_V W_O )`` with ``W_EE[t]`` the residual after block 0
for the token run on its own (the scan captures it: probe ``ordinal_tokens``). For every ordinal
sequence (numbers, number words, days, months, letters, ...) and every element but the last, the
logits of f(t_i) restricted to that sequence's tokens are checked: a success when the argmax is
t_{i+1}. Score = successes / checks over all sequences. Chance (a random argmax within each
sequence) is sum((m-1)/m) / sum(m-1) over sequences of m tokens: 0.070 for SmolLM2's and Gemma 3's
sets. Measured (issue 10): no head of SmolLM2-135M (best 0.14) or Gemma 3 270M (best 0.13) is near
the 0.5 threshold, while the same OV circuits show copy heads (the token itself first: up to 0.96).

Record: ``resid[ee_layer]`` ([N, n_q, d_model], last query row used) for N single tokens whose ids
are ``meta["token_ids"]`` [N]; ``meta["ordinal_sets"]``: ordered lists of token ids.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    register,
    require_site,
)
from headmine.detectors.weights import CircuitWeights

NAME = "successor"


def effective_embedding(record: CaptureRecord, meta: Mapping[str, Any], detector: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_ids [N], W_EE [N, d_model]) from the record's residual after block 0."""
    resid = require_site(record, Site.RESID, detector)
    layer = int(meta.get("ee_layer", 1))
    if layer not in resid:
        raise DetectorError(f"{detector} needs resid[{layer}] (the residual after block 0)", "capture Site.RESID at that layer")
    r = resid[layer].detach().cpu().to(torch.float32)
    w_ee = r[:, -1]
    ids = torch.as_tensor(meta["token_ids"]).long().cpu() if "token_ids" in meta else record.input_ids.cpu()[:, -1]
    if ids.shape[0] != w_ee.shape[0]:
        raise DetectorError(f"{detector}: {ids.shape[0]} token ids for {w_ee.shape[0]} rows")
    return ids, w_ee


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """0/1 per (sequence, element) check and head: argmax of f(t_i) over the sequence is t_{i+1}."""
    if weights is None:
        raise DetectorError("successor needs CircuitWeights", "pass weights=circuit_weights(lm)")
    ids, w_ee = effective_embedding(record, meta, NAME)
    row_of = {int(t): i for i, t in enumerate(ids.tolist())}
    sets = [[int(t) for t in s if int(t) in row_of] for s in meta.get("ordinal_sets", [])]
    sets = [s for s in sets if len(s) >= 2]
    if not sets:
        raise DetectorError("successor: no ordinal sequence of >= 2 captured tokens", "check the ordinal_tokens probe")
    n_items = sum(len(s) - 1 for s in sets)
    out = empty_scores(n_items, weights.n_layers, weights.n_heads)
    for layer in range(weights.n_layers):
        heads_out = weights.ov(w_ee, layer)  # [h, N, d_model]
        item = 0
        for s in sets:
            rows = torch.tensor([row_of[t] for t in s])
            logits = weights.logits(heads_out[:, rows[:-1]], torch.tensor(s))  # [h, m-1, m]
            pred = logits.argmax(-1)  # [h, m-1]
            ok = pred == torch.arange(1, len(s))[None, :]
            out[item:item + len(s) - 1, layer, :] = ok.T.to(torch.float64)
            item += len(s) - 1
    return BatchScores(out)


DETECTOR = register(Detector(
    name=NAME, head_type="Successor Head", task="ordinal_tokens", sites=frozenset({Site.RESID}),
    causal=CausalCheckSpec(task="ordinal"),
    score=score, threshold=0.5, needs_weights=True,
    definition="share of ordinal tokens whose effective OV output ranks their successor first within the sequence",
))
