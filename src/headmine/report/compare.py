"""Comparison of two runs or two models: shared score maps side by side, difference and rank agreement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headmine.atlas import Atlas
from headmine.atlas.artifacts import finite
from headmine.core.errors import InputError
from headmine.report.data import ModelData, load_model_data
from headmine.report.runs import require_model
from headmine.report.series import Series, head_id, rank_agreement


@dataclass
class CompareData:
    """Two sides (A, B) and, per shared (kind, method, metric), their agreement and difference."""

    title: str
    mode: str  # "runs" or "models"
    a_label: str
    b_label: str
    a: ModelData
    b: ModelData
    pairs: list[dict[str, Any]]
    diffs: list[Series]
    only_a: list[str]
    only_b: list[str]
    label_changes: list[dict[str, Any]] = field(default_factory=list)

    def page_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "a": {"n_layers": self.a.n_layers, "n_heads": self.a.n_heads, "series": [s.to_json() for s in self.a.series]},
            "b": {"n_layers": self.b.n_layers, "n_heads": self.b.n_heads, "series": [s.to_json() for s in self.b.series]},
            "diff": {"n_layers": self.a.n_layers, "n_heads": self.a.n_heads, "series": [s.to_json() for s in self.diffs]},
        }


def _match_key(s: Series) -> tuple[str, str, str]:
    return (s.kind, s.method, s.metric)


def _prefix(side: ModelData, p: str) -> None:
    for s in side.series:
        s.key = f"{p}{s.key}"


def _compare(atlas: Atlas, a: ModelData, b: ModelData, *, mode: str, a_label: str, b_label: str) -> CompareData:
    _prefix(a, "a")
    _prefix(b, "b")
    a_by = {}
    for s in a.series:
        a_by.setdefault(_match_key(s), s)
    b_by = {}
    for s in b.series:
        b_by.setdefault(_match_key(s), s)
    same_shape = (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads)
    pairs, diffs = [], []
    for key, sa in a_by.items():
        sb = b_by.get(key)
        if sb is None:
            continue
        pair: dict[str, Any] = {"label": sa.label, "a": sa.key, "b": sb.key, "same_shape": same_shape,
                                "rho": None, "n": 0, "diff": None, "movers": []}
        if same_shape:
            agree = rank_agreement([sa, sb])
            pair["rho"], pair["n"] = agree["rho"][0][1], agree["n"][0][1]
            d = Series(key=f"d{len(diffs)}", kind=sa.kind, task=sa.task, method=sa.method,
                       metric=f"{sa.metric} (B − A)", run_id=sb.run_id, values=sb.values - sa.values)
            diffs.append(d)
            pair["diff"] = d.key
            flat = [(abs(v), v, layer, head) for (layer, head), v in np.ndenumerate(d.values) if np.isfinite(v)]
            flat.sort(reverse=True)
            pair["movers"] = [{"head": head_id(layer, head), "a": finite(sa.values[layer, head]),
                               "b": finite(sb.values[layer, head]), "delta": finite(v)}
                              for _, v, layer, head in flat[:5]]
        else:
            pair["a_max"] = finite(np.nanmax(sa.values)) if np.isfinite(sa.values).any() else None
            pair["b_max"] = finite(np.nanmax(sb.values)) if np.isfinite(sb.values).any() else None
        pairs.append(pair)
    only_a = sorted(" · ".join(k) for k in set(a_by) - set(b_by))
    only_b = sorted(" · ".join(k) for k in set(b_by) - set(a_by))
    changes = []
    for hid in sorted(set(a.roles) | set(b.roles), key=_head_sort):
        ra, rb = a.roles.get(hid), b.roles.get(hid)
        ta, tb = (ra or {}).get("head_type"), (rb or {}).get("head_type")
        if ta != tb:
            changes.append({"head": hid, "a": ta, "b": tb})
    return CompareData(title=f"{a_label} vs {b_label}", mode=mode, a_label=a_label, b_label=b_label, a=a, b=b,
                       pairs=pairs, diffs=diffs, only_a=only_a, only_b=only_b,
                       label_changes=changes if same_shape else [])


def _head_sort(hid: str) -> tuple[int, int]:
    layer, head = hid[1:].split("H")
    return int(layer), int(head)


def compare_runs(atlas: Atlas, run_a: int, run_b: int) -> CompareData:
    """Compare two runs (any kinds; usually the same kind on two models, seeds or settings)."""
    if int(run_a) == int(run_b):
        raise InputError(f"--compare got the same run twice ({run_a})", "give two different run ids")
    ra, rb = atlas.run(int(run_a)), atlas.run(int(run_b))  # AtlasError for unknown ids
    a = load_model_data(atlas, ra.model, run_ids=[int(run_a)])
    b = load_model_data(atlas, rb.model, run_ids=[int(run_b)])
    return _compare(atlas, a, b, mode="runs", a_label=f"run {int(run_a)} ({ra.kind}, {ra.model})",
                    b_label=f"run {int(run_b)} ({rb.kind}, {rb.model})")


def compare_models(atlas: Atlas, model_a: str, model_b: str) -> CompareData:
    """Compare the newest results of two models, method by method."""
    if model_a == model_b:
        raise InputError(f"--compare-models got the same model twice ({model_a!r})", "give two different models")
    require_model(atlas, model_a)
    require_model(atlas, model_b)
    a = load_model_data(atlas, model_a)
    b = load_model_data(atlas, model_b)
    return _compare(atlas, a, b, mode="models", a_label=model_a, b_label=model_b)
