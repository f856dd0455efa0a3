"""Positional / local heads (survey: Positional Head, Local Head), on repeated random tokens.

Random tokens carry no content cue, so attention that sits at a fixed offset there is positional
by construction (on natural text a content head can look positional). Offset 0 is the survey's
Diagonal Head (e.g. the toy model's L0H2, a current-token head its induction heads depend on).

``positional``: for each head, the attention mass at each fixed offset ``i - j`` for offsets
0..K-1 (K = 8) on real query rows, key 0 excluded and rows renormalised over keys >= 1; the
score is the largest single-offset mass. It is 1 for a head that always attends at one fixed
offset (previous-token heads score high here too, with offset 1; self heads with offset 0).
``local``: attention mass within the last W = 4 positions (offsets 0..3), same normalisation.
Rows with fewer than 4 earlier keys (besides key 0) are skipped.
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
    non_first_mass,
    query_positions,
    register,
    require_site,
)

MAX_OFFSET = 8
WINDOW = 4


def offset_masses(record: CaptureRecord, meta: Mapping[str, Any],
                  detector: str) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], int, int]:
    """Per layer: [b, h, MAX_OFFSET] mean (renormalised) attention mass at offsets 0..MAX_OFFSET-1 (NaN if
    no row), and [b, h] the non-first-token mass those renormalised rows came from."""
    patterns = require_site(record, Site.PATTERN, detector)
    mask = record.attention_mask.cpu().bool()
    b, _t = mask.shape
    out: dict[int, torch.Tensor] = {}
    kept: dict[int, torch.Tensor] = {}
    rows = torch.arange(b)[:, None]
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32).clone()
        qpos = query_positions(record, a.shape[2])
        kept[layer] = non_first_mass(a, mask, qpos, (qpos >= WINDOW + 1) & mask[rows, qpos])
        a[..., 0] = 0.0
        a = a * mask[:, None, None, :].to(a.dtype)
        den = a.sum(-1, keepdim=True)
        a = a / den.clamp_min(1e-12)
        elig = (qpos >= WINDOW + 1) & mask[rows, qpos]  # [b, q]
        masses = []
        for off in range(MAX_OFFSET):
            k = (qpos - off).clamp_min(0)  # [b, q]
            m = a.gather(-1, k[:, None, :, None].expand(b, a.shape[1], a.shape[2], 1)).squeeze(-1)
            m = m * ((qpos - off) >= 1)[:, None].to(a.dtype)
            masses.append((m * elig[:, None]).sum(-1) / elig.sum(-1).clamp_min(1)[:, None])
        val = torch.stack(masses, -1)
        val[elig.sum(-1) == 0] = float("nan")
        out[layer] = val
    return out, kept, *n_layers_heads(record, meta)


def positional_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    masses, kept, n_layers, n_heads = offset_masses(record, meta, "positional")
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    mass = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, m in masses.items():
        out[:, layer, record.heads[layer]] = m.max(-1).values.to(torch.float64)
        mass[:, layer, record.heads[layer]] = kept[layer]
    return BatchScores(out, non_first_mass=mass)


def local_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    masses, kept, n_layers, n_heads = offset_masses(record, meta, "local")
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    mass = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, m in masses.items():
        out[:, layer, record.heads[layer]] = m[..., :WINDOW].sum(-1).to(torch.float64)
        mass[:, layer, record.heads[layer]] = kept[layer]
    return BatchScores(out, non_first_mass=mass)


POSITIONAL = register(Detector(
    name="positional", head_type="Positional Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    also_finds=(("Streaming Head", "recent-window part"), ("Local Head", "small fixed offsets / window"), ("Diagonal Head", "offset 0 (self-attention to the current token)"),),
    score=positional_score, threshold=0.6, definition=f"largest attention mass at one fixed offset 0..{MAX_OFFSET - 1}",
))
LOCAL = register(Detector(
    name="local", head_type="Local Head", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="repeated_tokens"),
    score=local_score, threshold=0.8, definition=f"attention mass within the last {WINDOW} positions",
))
