"""The ``ioi_circuit`` job: the IOI roles of every head (``headmine.causal.ioi_roles``) as one atlas run.

The run stores: one score row per head and test (the evidence arrays: relative path-patching effects,
attention signatures, DLA), one label per head with a role (its survey head type, the defining test's
effect and threshold), and the artifact ``ioi_circuit`` (roles, edges of the path-patching tests, copy
scores, thresholds, the random-head comparisons and the held-out faithfulness) that the report draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from headmine.atlas.job import AtlasRun, JobResult
from headmine.atlas.schema import LabelRow, RunRecord, ScoreRow
from headmine.causal.ioi_roles import EDGES, ROLE_TYPES, IOIRoles, IOIRolesConfig, ioi_roles
from headmine.models.loading import LoadedModel

ARTIFACT = "ioi_circuit"
"""Name of the artifact the report reads."""
RUN_KIND = "ioi_circuit"

# which evidence array holds the defining effect of each role (relative change of the logit difference)
_DEFINING = {"name_mover": "direct_path", "negative_name_mover": "direct_path", "backup_name_mover": "backup_compensation",
             "s_inhibition": "pp_nm_q", "induction": "pp_sinh_v", "duplicate_token": "pp_sinh_v",
             "previous_token": "pp_ind_k"}
_THRESHOLD = {"name_mover": "direct", "negative_name_mover": "direct", "backup_name_mover": "backup",
              "s_inhibition": "s_inhibition", "induction": "s_inh_values", "duplicate_token": "s_inh_values",
              "previous_token": "induction_keys"}


def _num(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def circuit_summary(res: IOIRoles) -> dict[str, Any]:
    """The JSON-ready artifact: roles, edges, evidence of each role head, tests vs random, faithfulness."""
    ev = res.evidence
    heads: list[dict[str, Any]] = []
    for role, hs in res.roles.items():
        for h in hs:
            arr = ev.get(_DEFINING[role])
            heads.append({"head": str(h), "layer": h.layer, "index": h.head, "role": role, "type": ROLE_TYPES[role],
                          "effect": _num(arr[h.layer, h.head]) if arr is not None else None,
                          "direct_path": _num(ev["direct_path"][h.layer, h.head]),
                          "attn": {k[5:]: _num(v[h.layer, h.head]) for k, v in ev.items() if k.startswith("attn_")}})
    edges: list[dict[str, Any]] = []
    for sender, receiver, inp in EDGES:
        arr = ev.get(_DEFINING[sender])
        for s in res.roles[sender]:
            for r in res.roles[receiver]:
                if r.layer > s.layer:
                    edges.append({"from": str(s), "to": str(r), "input": inp,
                                  "effect": _num(arr[s.layer, s.head]) if arr is not None else None})
    for role in ("name_mover", "negative_name_mover", "backup_name_mover"):
        for h in res.roles[role]:
            edges.append({"from": str(h), "to": "logits", "input": "direct",
                          "effect": _num(ev["direct_path"][h.layer, h.head])})
    return {
        "model": res.model, "n_layers": res.n_layers, "n_heads": res.n_heads,
        "roles": {r: [str(h) for h in hs] for r, hs in res.roles.items()}, "role_types": ROLE_TYPES,
        "direct_effect_heads": [str(h) for h in res.direct_effect],
        "heads": heads, "edges": edges, "thresholds": {k: _num(v) for k, v in res.thresholds.items()},
        "copy": res.copy, "vs_random": res.vs_random, "faithfulness": res.faithfulness,
        "ld_fit": res.ld_fit, "ld_heldout": res.ld_heldout, "config": asdict(res.config), "notes": res.notes,
        "duration_s": res.duration_s,
    }


@dataclass
class IOICircuitResult(JobResult):
    """One ``ioi_circuit`` run: the roles found on ``model`` and their evidence."""

    model: str
    model_info: dict[str, Any]
    result: IOIRoles

    @property
    def summary(self) -> dict[str, Any]:
        return circuit_summary(self.result)

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        res = self.result
        record = RunRecord(kind=RUN_KIND, model=self.model, model_info=self.model_info, task="ioi",
                           params=asdict(res.config), seeds=res.config.seed, duration_s=res.duration_s,
                           group_id=group_id, notes="; ".join(res.notes) or None)
        scores = [ScoreRow(layer=lay, head=hd, method="ioi_roles", metric=name, value=float(arr[lay, hd]),
                           n=res.config.n_fit)
                  for name, arr in sorted(res.evidence.items()) for lay, hd in np.ndindex(*arr.shape)
                  if np.isfinite(arr[lay, hd])]
        labels = []
        for role, hs in res.roles.items():
            arr = res.evidence.get(_DEFINING[role])
            for h in hs:
                value = float(arr[h.layer, h.head]) if arr is not None else float("nan")
                labels.append(LabelRow(layer=h.layer, head=h.head, head_type=ROLE_TYPES[role], method="ioi_roles",
                                       value=value, threshold=_num(res.thresholds.get(_THRESHOLD[role])),
                                       note=f"IOI role {role}: defining test on {res.config.n_fit} fit prompts"))
        dla = res.evidence.get("dla")
        for h in res.direct_effect:
            labels.append(LabelRow(layer=h.layer, head=h.head, head_type="Direct-Effect Head", method="ioi_roles",
                                   value=float(dla[h.layer, h.head]) if dla is not None else float("nan"),
                                   threshold=_num(res.thresholds.get("dla")), note="DLA of the IOI logit difference"))
        return AtlasRun(record=record, scores=scores, labels=labels, artifacts={ARTIFACT: self.summary})


def run_ioi_circuit(lm: LoadedModel, config: IOIRolesConfig | None = None, *,
                    log: Callable[..., Any] | None = None) -> IOICircuitResult:
    """Classify the IOI roles of every head of ``lm`` and evaluate the circuit (nothing is written)."""
    res = ioi_roles(lm, config, log=log)
    return IOICircuitResult(model=lm.name, model_info=lm.model_info(), result=res)
