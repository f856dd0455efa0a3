"""Copying score (Olsson et al. 2022; survey: Copy Head), on repeated random tokens.

The methods file leaves the exact ratio open. Chosen definition: at every destination i that has
an earlier copy (second repeat), take the head's direct contribution ``r_i = z_i W_O`` through
the (linearised) final norm and W_U, transform the logits as ``g = ReLU(logit - mean_vocab logit)``,
and divide the raise given to the token the head attends to most (argmax over keys >= 1) by the
raise given to all distinct tokens of the sequence. Averaged over destinations; in [0, 1], 1 =
the head raises exactly the token it attends to. Not rescaled to [-1, 1].
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
    duplicate_template,
    empty_scores,
    n_layers_heads,
    query_positions,
    register,
    require_site,
)
from headmine.detectors.weights import CircuitWeights

NAME = "copying"


def score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """Per sequence: mean over repeated destinations of raise(attended token) / raise(all its tokens)."""
    if weights is None:
        raise DetectorError("copying needs CircuitWeights (W_O, W_U)", "pass weights=circuit_weights(lm)")
    patterns = require_site(record, Site.PATTERN, NAME)
    zs = require_site(record, Site.Z, NAME)
    n_layers, n_heads = n_layers_heads(record, meta)
    ids = record.input_ids.cpu()
    mask = record.attention_mask.cpu().bool()
    b = ids.shape[0]
    eligible_all = duplicate_template(ids).any(-1) & mask
    out = empty_scores(b, n_layers, n_heads)
    u_mean = weights.W_U.to(torch.float32).mean(1)
    for layer, z in zs.items():
        if layer not in patterns:
            continue
        heads = record.heads[layer]
        a = patterns[layer].detach().cpu().to(torch.float32)  # [b, h, q, k]
        z = z.detach().cpu().to(torch.float32)  # [b, q, h, d]
        qpos = query_positions(record, z.shape[1])
        w_o = weights.W_O[layer, heads].to(torch.float32)  # [h, d, m]
        for row in range(b):
            elig = eligible_all[row, qpos[row]]
            if not elig.any():
                continue
            toks = torch.unique(ids[row][mask[row]])
            r = torch.einsum("qhd,hdm->qhm", z[row][elig], w_o)
            rn = weights.normalize(r)
            logit = rn @ weights.W_U[:, toks].to(torch.float32)  # [q, h, S]
            g = torch.relu(logit - (rn @ u_mean)[..., None])
            att = a[row][:, elig].clone()  # [h, q, k]
            att[..., 0] = -1.0
            att[..., ~mask[row]] = -1.0
            top_tok = ids[row][att.argmax(-1)]  # [h, q]
            col = (toks[None, None, :] == top_tok[..., None]).float()  # [h, q, S]
            g_hq = g.permute(1, 0, 2)  # [h, q, S]
            ratio = (g_hq * col).sum(-1) / g_hq.sum(-1).clamp_min(1e-12)
            out[row, layer, heads] = ratio.mean(-1).to(torch.float64)
    return BatchScores(out)


DETECTOR = register(Detector(
    name=NAME, head_type="Copy Head", task="repeated_tokens", sites=frozenset({Site.PATTERN, Site.Z}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    also_finds=(("Name Mover Head", "OV copying of names"),),
    score=score, threshold=0.5, needs_weights=True,
    definition="share of the head's direct logit raise that goes to the token it attends to",
))
