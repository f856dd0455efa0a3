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
from headmine.report.meaning import Meaning, importance, meaning_for, rank_key

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
    meaning: Meaning | None = None
    scale: str = ""  # the colour-scale group this map shares (see ``scale_groups``)

    @property
    def sign(self) -> int:
        """Importance sign: ``sign * value`` ranks heads (0 = by |value|)."""
        return self.meaning.sign if self.meaning is not None else 0

    @property
    def by_abs(self) -> bool:
        return self.meaning.by_abs if self.meaning is not None else True

    def importance(self) -> np.ndarray:
        """[L, H] sign-aligned importance of each head (positive: supports the behaviour)."""
        return np.asarray(importance(self.values, self.sign), dtype=float)

    def rank_key(self) -> np.ndarray:
        """[L, H] what ranks the heads (|effect| for effects, the aligned value for scores)."""
        return np.asarray(rank_key(self.values, self.sign, self.by_abs), dtype=float)

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
            "sign": self.sign,
            "by_abs": self.by_abs,
            "scale": self.scale,
        }
        if self.meaning is not None:
            out["meaning"] = self.meaning.to_json()
        if self.stderr is not None and np.isfinite(self.stderr).any():
            out["se"] = [[finite(v, 3) for v in row] for row in self.stderr]
        return out



def series_from(head_scores: pd.DataFrame, n_l: int, n_h: int,
                definitions: dict[str, str] | None = None) -> list[Series]:
    """One Series per (kind, task, method, metric), from the newest run that has it, with its
    :class:`Meaning` (``definitions``: detector name -> its one-line definition, from the scan)."""
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
        task_s = None if task is None or (isinstance(task, float) and math.isnan(task)) else str(task)
        out.append(
            Series(
                key="",
                kind=str(kind),
                task=task_s,
                method=str(method),
                metric=str(metric),
                run_id=run_id,
                values=vals,
                stderr=se if np.isfinite(se).any() else None,
                n=int(ns.max()) if len(ns) else None,
                meaning=meaning_for(str(kind), task_s, str(method), str(metric),
                                    definition=(definitions or {}).get(str(method))),
            )
        )
    out.sort(key=lambda s: (_kind_order(s.kind), s.kind, s.task or "", s.method, metric_order(s.metric), s.metric))
    for i, s in enumerate(out):
        s.key = f"s{i}"
        s.scale = scale_group(s)
    return out


CAUSAL_KINDS = ("ablation", "patching", "path_patching", "attribution", "dla")
"""Run kinds whose head maps are effects on a task's answer metric (shown per task, sign-aligned)."""


def scale_group(s: Series) -> str:
    """The colour-scale group of a map: maps of the same kind share one scale, so a weak map looks weak.

    Scan detector scores share one scale; a task's main causal maps share one sign-aligned
    importance scale; CHG gates share [0, 1] per run kind and task; anything else scales per
    (kind, task, metric).
    """
    if s.kind == "scan" and s.metric == "score":
        return "scan:score"
    if s.kind in CAUSAL_KINDS and not s.per_position and s.metric.startswith(("delta_", "dla_")):
        return f"task:{s.task or ''}:importance"
    if s.kind.startswith("chg"):
        return f"{s.kind}:{s.task or ''}:gates"
    return f"{s.kind}:{s.task or ''}:{s.metric}"


def aligned(s: Series) -> bool:
    """Whether a map is drawn as importance (sign-aligned) rather than raw values."""
    return s.scale.endswith(":importance")


def scale_groups(series: list[Series]) -> dict[str, dict[str, Any]]:
    """Each scale group's shared range over the values its maps draw (zero always inside it)."""
    out: dict[str, dict[str, Any]] = {}
    for s in series:
        vals = s.importance() if aligned(s) else s.values
        fin = vals[np.isfinite(vals)]
        g = out.setdefault(s.scale, {"lo": 0.0, "hi": 0.0, "unit": s.meaning.unit if s.meaning else "",
                                     "aligned": aligned(s), "n_maps": 0})
        g["n_maps"] += 1
        if fin.size:
            g["lo"] = min(g["lo"], float(fin.min()))
            g["hi"] = max(g["hi"], float(fin.max()))
    for key, g in out.items():
        if key.endswith(":gates"):  # gates live in [0, 1]: one fixed scale
            g["lo"], g["hi"] = min(g["lo"], 0.0), max(g["hi"], 1.0)
        # importance maps always read red = supports, blue = works against, so they diverge at 0
        g["diverging"] = g["lo"] < 0 < g["hi"] or (g["aligned"] and g["hi"] > 0)
        if g["diverging"]:
            m = max(-g["lo"], g["hi"])
            g["lo"], g["hi"] = -m, m
        g["lo"], g["hi"] = finite(g["lo"]), finite(g["hi"])
    return out


def ranks(values: np.ndarray, sign: int, by_abs: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(rank, percentile, n) of every head by :func:`~headmine.report.meaning.rank_key`; ties share the
    best rank and one percentile.

    Rank 1 is the most important head; percentile = 100 x (heads strictly less important + half
    of the other heads tied with it) / (n - 1), so a tie group sits at its middle, and NaN heads get
    rank 0 / NaN.
    """
    imp = np.asarray(rank_key(values, sign, by_abs), dtype=float)
    flat = imp.ravel()
    ok = np.isfinite(flat)
    fin = flat[ok]
    n = int(fin.size)
    rank = np.zeros(flat.shape, dtype=int)
    pct = np.full(flat.shape, np.nan)
    if n:
        srt = np.sort(fin)
        above = n - np.searchsorted(srt, fin, side="right")
        below = np.searchsorted(srt, fin, side="left")
        ties = n - above - below
        rank[ok] = above + 1
        pct[ok] = 100.0 * (below + 0.5 * (ties - 1)) / (n - 1) if n > 1 else 100.0
    return rank.reshape(imp.shape), pct.reshape(imp.shape), n


def top_heads(s: Series, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` most important heads of a series (by its rank key): (layer, head, value), ties in head order."""
    key = s.rank_key()
    flat = [(-key[layer, head], layer, head) for layer, head in np.ndindex(key.shape) if np.isfinite(key[layer, head])]
    flat.sort()
    return [(layer, head, float(s.values[layer, head])) for _, layer, head in flat[:k]]


def method_agreement(series: list[Series], *, k: int = 10, min_common: int = 20) -> dict[str, Any]:
    """Agreement between every pair of series: how many of their top-k heads (by each one's rank key,
    |effect| for effects) they share, and the Spearman rank correlation of their sign-aligned
    importances on the union of the two top-k sets (so opposite signs show as disagreement).

    ``k`` shrinks to a quarter of the heads on small models. A pair is marked ``weak`` (greyed on
    the page) when the two series score fewer than ``max(min_common, 2k)`` heads in common, or the
    union holds fewer than 5 heads with both values.
    """
    if not series:
        return {"keys": [], "labels": [], "k": k, "overlap": [], "rho": [], "n": [], "weak": []}
    n_heads = int(series[0].values.size)
    k = max(1, min(k, n_heads // 4 or 1))
    imps = [s.importance().ravel() for s in series]
    tops = [{(i, j) for i, j, _ in top_heads(s, k)} for s in series]
    m = len(series)
    overlap = [[0] * m for _ in range(m)]
    rho: list[list[float | None]] = [[None] * m for _ in range(m)]
    n = [[0] * m for _ in range(m)]
    weak = [[True] * m for _ in range(m)]
    n_h = series[0].values.shape[1]
    for a in range(m):
        for b in range(m):
            common = int((np.isfinite(imps[a]) & np.isfinite(imps[b])).sum())
            union = sorted(tops[a] | tops[b])
            idx = np.array([i * n_h + j for i, j in union], dtype=int)
            both = np.isfinite(imps[a][idx]) & np.isfinite(imps[b][idx]) if len(idx) else np.array([], bool)
            x, y = imps[a][idx][both], imps[b][idx][both]
            overlap[a][b] = len(tops[a] & tops[b])
            n[a][b] = int(both.sum())
            if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
                rho[a][b] = finite(float(np.corrcoef(rx, ry)[0, 1]), 3)
            weak[a][b] = common < max(min_common, 2 * k) or n[a][b] < 5
    return {"keys": [s.key for s in series], "labels": [s.label for s in series],
            "methods": [s.method for s in series], "kinds": [s.kind for s in series], "k": k,
            "overlap": overlap, "rho": rho, "n": n, "weak": weak}


_KIND_ORDER = ("scan", "causal_check", "ablation", "patching", "path_patching", "attribution", "dla",
               "logit_lens", "chg", "chg_contrast", "factual")


def _kind_order(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def is_per_position(metric: str) -> bool:
    return "@pos" in metric


def metric_order(metric: str) -> int:
    """Where ``metric`` stands among a method's metrics: ``PRIMARY_METRICS`` order, unknown metrics after
    them, per-position metrics last (the lowest is the method's primary metric)."""
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
        if cur is None or metric_order(s.metric) < metric_order(cur.metric):
            best[s.group] = s
    return [s for s in series if best.get(s.group) is s]


def method_top_heads(series: list[Series], k: int) -> dict[str, list[str]]:
    """Head id -> the labels of the methods that put it in their top ``k``, over the primary series of
    every kind but ``scan`` (the scan stores its detectors' top heads itself): the heads whose
    attention the page should be able to show (``mine`` stores examples for exactly these)."""
    tops: dict[str, list[str]] = {}
    for s in primary_series(series):
        if s.kind != "scan":
            for layer, head, _ in top_heads(s, k):
                tops.setdefault(head_id(layer, head), []).append(s.label)
    return tops


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

