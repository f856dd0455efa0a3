"""Head-level score maps (one per ``(kind, task, method, metric)``), their order, and rank agreement.

Everything is generic: any head-level score series a new method writes becomes a heatmap and enters
the agreement table. No torch, no HTML here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas.artifacts import finite

PRIMARY_METRICS = ("score", "effect", "delta_", "dla_", "F", "removed", "G", "frac_", "value")
"""The metric that stands for a (kind, task, method) in the agreement table, first found wins
(a name ending in ``_`` matches as a prefix: ``delta_logit_diff``). Per-position metrics
(``...@pos3``) never stand for a method and are folded away on the page."""

MAX_OTHER_ROWS = 400


def head_id(layer: int, head: int) -> str:
    """``L{layer}H{head}``, the head key of every page structure."""
    return f"L{int(layer)}H{int(head)}"



@dataclass
class Series:
    """One head-level score map: the newest run's values of (kind, task, method, metric)."""

    key: str
    kind: str
    task: str | None
    method: str
    metric: str
    run_id: int
    values: np.ndarray  # [n_layers, n_heads], NaN = missing
    stderr: np.ndarray | None = None
    n: int | None = None

    @property
    def label(self) -> str:
        task = f" [{self.task}]" if self.task and self.kind != "scan" else ""
        return f"{self.method} · {self.metric}{task}"

    @property
    def per_position(self) -> bool:
        return is_per_position(self.metric)

    @property
    def group(self) -> tuple[str, str | None, str]:
        return (self.kind, self.task, self.method)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "kind": self.kind,
            "task": self.task,
            "method": self.method,
            "metric": self.metric,
            "label": self.label,
            "run": self.run_id,
            "n": self.n,
            "z": [[finite(v) for v in row] for row in self.values],
        }
        if self.stderr is not None and np.isfinite(self.stderr).any():
            out["se"] = [[finite(v, 3) for v in row] for row in self.stderr]
        return out



def series_from(head_scores: pd.DataFrame, n_l: int, n_h: int) -> list[Series]:
    """One Series per (kind, task, method, metric), from the newest run that has it."""
    if head_scores.empty:
        return []
    df = head_scores.copy()
    df["task"] = df["task"].astype(object).where(df["task"].notna(), None)
    keys = ["kind", "task", "method", "metric"]
    out: list[Series] = []
    for (kind, task, method, metric), grp in df.groupby(keys, sort=False, dropna=False):
        run_id = int(grp["run_id"].max())
        grp = grp[grp["run_id"] == run_id]
        vals = np.full((n_l, n_h), np.nan)
        se = np.full((n_l, n_h), np.nan)
        layers, heads = grp["layer"].to_numpy(int), grp["head"].to_numpy(int)
        ok = (layers >= 0) & (layers < n_l) & (heads >= 0) & (heads < n_h)
        vals[layers[ok], heads[ok]] = grp["value"].to_numpy(float)[ok]
        se[layers[ok], heads[ok]] = grp["stderr"].to_numpy(float)[ok]
        ns = grp["n"].dropna()
        out.append(
            Series(
                key="",
                kind=str(kind),
                task=None if task is None or (isinstance(task, float) and math.isnan(task)) else str(task),
                method=str(method),
                metric=str(metric),
                run_id=run_id,
                values=vals,
                stderr=se if np.isfinite(se).any() else None,
                n=int(ns.max()) if len(ns) else None,
            )
        )
    out.sort(key=lambda s: (_kind_order(s.kind), s.kind, s.task or "", s.method, _metric_order(s.metric), s.metric))
    for i, s in enumerate(out):
        s.key = f"s{i}"
    return out


_KIND_ORDER = ("scan", "causal_check", "ablation", "patching", "path_patching", "attribution", "dla",
               "logit_lens", "chg", "chg_contrast", "factual")


def _kind_order(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def is_per_position(metric: str) -> bool:
    return "@pos" in metric


def _metric_order(metric: str) -> int:
    if is_per_position(metric):
        return len(PRIMARY_METRICS) + 1
    for i, p in enumerate(PRIMARY_METRICS):
        if metric == p or (p.endswith("_") and metric.startswith(p)):
            return i
    return len(PRIMARY_METRICS)


def primary_series(series: list[Series]) -> list[Series]:
    """One series per (kind, task, method): its primary metric (``PRIMARY_METRICS`` order)."""
    best: dict[tuple[str, str | None, str], Series] = {}
    for s in series:
        if is_per_position(s.metric):
            continue
        cur = best.get(s.group)
        if cur is None or _metric_order(s.metric) < _metric_order(cur.metric):
            best[s.group] = s
    return [s for s in series if best.get(s.group) is s]


def rank_agreement(series: list[Series], *, min_heads: int = 5) -> dict[str, Any]:
    """Spearman rank correlation over heads between every pair of series (NaN where < min_heads)."""
    if not series:
        return {"keys": [], "labels": [], "rho": [], "n": []}
    frame = pd.DataFrame({s.key: s.values.ravel() for s in series})
    ranks = frame.rank()
    k = len(series)
    rho = np.full((k, k), np.nan)
    n = np.zeros((k, k), dtype=int)
    for i in range(k):
        for j in range(i, k):
            both = ranks.iloc[:, [i, j]].dropna()
            n[i, j] = n[j, i] = len(both)
            if len(both) < min_heads:
                continue
            a, b = both.iloc[:, 0].rank(), both.iloc[:, 1].rank()
            if a.std() == 0 or b.std() == 0:
                continue
            rho[i, j] = rho[j, i] = float(np.corrcoef(a, b)[0, 1])
    return {
        "keys": [s.key for s in series],
        "labels": [s.label for s in series],
        "kinds": [s.kind for s in series],
        "rho": [[finite(v, 3) for v in row] for row in rho],
        "n": n.tolist(),
    }



def other_scores(scores: pd.DataFrame) -> tuple[list[dict[str, Any]], int]:
    """Rows of the non-head scores (mlp, embed, layer), capped at ``MAX_OTHER_ROWS``, and their total."""
    df = scores[scores["component"] != "head"]
    rows = []
    for r in df.head(MAX_OTHER_ROWS).itertuples(index=False):
        rows.append({"run": int(r.run_id), "kind": r.kind, "method": r.method, "metric": r.metric,
                     "component": r.component, "layer": int(r.layer), "head": int(r.head),
                     "value": finite(r.value), "n": None if r.n is pd.NA else int(r.n),
                     "stderr": finite(r.stderr)})
    return rows, len(df)

