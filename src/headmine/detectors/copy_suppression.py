"""Copy-suppression / negative heads (McDougall et al. 2023; survey: Copy Suppression Head).

Both tests use single-token effective embeddings W_EE (the residual after block 0 for each token
on its own; probe ``text_tokens``: the distinct tokens of the natural-text probe) and, to stay
cheap on a CPU, rank within that token sample instead of the whole vocabulary (the methods file
ranks over the vocabulary; bottom-10 of 49k tokens is about the bottom 0.02%, so the sample
version uses the reproduction's other cut, the bottom/top 5%):

- ``copy_suppression`` (OV test): ``M[t, u] = logit_u( norm_l(W_EE[t]) W_V W_O )``; the item for
  token t is 1 when ``M[t, t]`` lies in the bottom 5% of row t (the head writes *against* the
  token it reads). Score = share of tokens.
- ``copy_suppression_qk`` (QK test): query side the unembedding direction of t (the token being
  predicted), key side W_EE[u], each normed as the layer's attention input, through W_Q W_K^T
  without RoPE (position-free); the item is 1 when the self entry is in the top 5% of its row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors.base import BatchScores, CausalCheckSpec, Detector, empty_scores, register
from headmine.detectors.successor import effective_embedding
from headmine.detectors.weights import CircuitWeights

FRACTION = 0.05


def _rank_cut(n: int) -> int:
    return max(1, round(FRACTION * n))


def ov_score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """0/1 per token and head: own logit in the bottom 5% of the sample's logits."""
    if weights is None:
        raise DetectorError("copy_suppression needs CircuitWeights", "pass weights=circuit_weights(lm)")
    ids, w_ee = effective_embedding(record, meta, "copy_suppression")
    n = ids.shape[0]
    k = _rank_cut(n)
    out = empty_scores(n, weights.n_layers, weights.n_heads)
    for layer in range(weights.n_layers):
        logits = weights.logits(weights.ov(w_ee, layer), ids)  # [h, N, N]
        self_logit = logits.diagonal(dim1=-2, dim2=-1)  # [h, N]
        rank_from_bottom = (logits < self_logit[..., None]).sum(-1)  # entries below self
        out[:, layer, :] = (rank_from_bottom < k).T.to(torch.float64)
    return BatchScores(out)


def qk_score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """0/1 per token and head: a query predicting t attends most to t itself (top 5%)."""
    if weights is None:
        raise DetectorError("copy_suppression_qk needs CircuitWeights", "pass weights=circuit_weights(lm)")
    ids, w_ee = effective_embedding(record, meta, "copy_suppression_qk")
    n = ids.shape[0]
    k = _rank_cut(n)
    out = empty_scores(n, weights.n_layers, weights.n_heads)
    w_u = weights.W_U[:, ids].T.to(torch.float32)  # [N, d_model]
    for layer in range(weights.n_layers):
        gain = weights.attn_norm_gain[layer]
        q = torch.einsum("nm,hmd->hnd", weights.normalize(w_u, gain), weights.W_Q[layer].to(torch.float32))
        kk = torch.einsum("nm,hmd->hnd", weights.normalize(w_ee, gain), weights.W_K[layer].to(torch.float32))
        s = q @ kk.transpose(-1, -2)  # [h, N(query token), N(key token)]
        self_s = s.diagonal(dim1=-2, dim2=-1)
        above = (s > self_s[..., None]).sum(-1)
        out[:, layer, :] = (above < k).T.to(torch.float64)
    return BatchScores(out)


OV = register(Detector(
    name="copy_suppression", head_type="Copy Suppression Head", task="text_tokens", sites=frozenset({Site.RESID}),
    causal=CausalCheckSpec(task="natural_text"),
    also_finds=(("Negative Name Mover Head", "copy suppression of the repeated name in IOI"),),
    score=ov_score, threshold=0.5, needs_weights=True,
    definition="share of tokens whose OV output puts their own logit in the bottom 5% (token sample)",
))
QK = register(Detector(
    name="copy_suppression_qk", head_type="Copy Suppression Head", task="text_tokens", sites=frozenset({Site.RESID}),
    causal=CausalCheckSpec(task="natural_text"),
    score=qk_score, threshold=0.5, needs_weights=True,
    definition="share of tokens t for which a query predicting t ranks key t in the top 5% (no RoPE)",
))
