"""Name mover heads on IOI (Wang et al. 2022; survey: Name Mover / Negative Name Mover Head).

- ``name_mover``: attention from END (the last prompt token, ``meta["END"]``) to the indirect
  object (``meta["IO"]``), per prompt. High for name movers *and* negative name movers; the
  OV scores below tell them apart.
- ``name_copy``: OV copy score (methods 3.11, adapted): for each candidate name token on its own,
  its effective embedding W_EE (residual after block 0) through the head's OV circuit and W_U;
  the item is 1 when the name's own logit is the highest among all candidate names. The methods
  file uses top-5 over the vocabulary; ranking within the name set keeps it cheap on a CPU.
- ``negative_name_copy``: same, 1 when the own logit is the *lowest* among the names.
Records for the OV scores come from probe ``ioi_names`` (the IOI names, one token each).
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
    n_layers_heads,
    query_positions,
    register,
    require_site,
)
from headmine.detectors.successor import effective_embedding
from headmine.detectors.weights import CircuitWeights


def _pos(meta: Mapping[str, Any], keys: tuple[str, ...], b: int) -> torch.Tensor:
    for key in keys:
        if key in meta:
            return torch.as_tensor(meta[key]).long().cpu().view(b, -1)[:, 0]
    raise DetectorError(f"name_mover needs meta[{keys[0]!r}] (IOI positions)", "use the ioi probe task")


def attention_score(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """A[END, IO] per prompt (the END row must be among the captured query rows)."""
    patterns = require_site(record, Site.PATTERN, "name_mover")
    n_layers, n_heads = n_layers_heads(record, meta)
    b = record.input_ids.shape[0]
    end, io = _pos(meta, ("END", "end_pos"), b), _pos(meta, ("IO", "io_pos"), b)
    out = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)
        qpos = query_positions(record, a.shape[2])
        hit = qpos == end[:, None]  # [b, q]
        if not hit.any(-1).all():
            raise DetectorError("name_mover: the END position was not captured", "capture query_positions=end_pos")
        qrow = hit.float().argmax(-1)
        rows = torch.arange(b)
        val = a[rows, :, qrow, :].gather(-1, io[:, None, None].expand(b, a.shape[1], 1)).squeeze(-1)
        out[:, layer, record.heads[layer]] = val.to(torch.float64)
    return BatchScores(out)


def _copy(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None, negative: bool) -> BatchScores:
    name = "negative_name_copy" if negative else "name_copy"
    if weights is None:
        raise DetectorError(f"{name} needs CircuitWeights", "pass weights=circuit_weights(lm)")
    ids, w_ee = effective_embedding(record, meta, name)
    out = empty_scores(ids.shape[0], weights.n_layers, weights.n_heads)
    for layer in range(weights.n_layers):
        logits = weights.logits(weights.ov(w_ee, layer), ids)  # [h, N, N]
        pick = logits.argmin(-1) if negative else logits.argmax(-1)
        out[:, layer, :] = (pick == torch.arange(ids.shape[0])[None]).T.to(torch.float64)
    return BatchScores(out)


def copy_score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """1 per name when the head's OV output ranks the name first among the names."""
    return _copy(record, meta, weights, negative=False)


def negative_copy_score(record: CaptureRecord, meta: Mapping[str, Any], weights: CircuitWeights | None = None) -> BatchScores:
    """1 per name when the head's OV output ranks the name last among the names."""
    return _copy(record, meta, weights, negative=True)


ATTENTION = register(Detector(
    name="name_mover", head_type="Name Mover Head", task="ioi", sites=frozenset({Site.PATTERN}),
    causal=CausalCheckSpec(task="ioi"),
    also_finds=(("Backup Name Mover Head", "name movers that only matter once the primary ones are ablated"), ("Negative Name Mover Head", "negative direct effect"),),
    score=attention_score, threshold=0.3, definition="attention from END to the indirect object",
))
COPY = register(Detector(
    name="name_copy", head_type="Name Mover Head", task="ioi_names", sites=frozenset({Site.RESID}),
    causal=CausalCheckSpec(task="ioi"),
    score=copy_score, threshold=0.5, needs_weights=True,
    definition="share of names the head's OV circuit ranks first among the names",
))
NEGATIVE_COPY = register(Detector(
    name="negative_name_copy", head_type="Negative Name Mover Head", task="ioi_names", sites=frozenset({Site.RESID}),
    causal=CausalCheckSpec(task="ioi", expected_sign=-1),
    score=negative_copy_score, threshold=0.5, needs_weights=True,
    definition="share of names the head's OV circuit ranks last among the names",
))
