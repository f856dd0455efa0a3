"""Per-task panels: a task's causal methods side by side on one shared, sign-aligned scale, their
agreement (top-k overlap and rank correlation on the union of top heads) and the heads that matter.

"Sign-aligned" means each map draws its importance (``meaning.sign * value``): for every method a
positive cell is a head that supports the task's answer, so the maps read alike.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from headmine.atlas.artifacts import finite
from headmine.report.series import (
    CAUSAL_KINDS,
    Series,
    aligned,
    head_id,
    method_agreement,
    primary_series,
    ranks,
    top_heads,
)

TOP_ROWS = 15


def task_anchor(task: str) -> str:
    """The page anchor of a task's panel: ``task-ioi``."""
    return "task-" + (re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-") or "none")


def _top_table(maps: list[Series], k: int) -> list[dict[str, Any]]:
    """The heads in any method's top-k, ordered by their mean rank over the methods."""
    ranked = {s.key: ranks(s.values, s.sign, s.by_abs) for s in maps}
    heads: dict[tuple[int, int], None] = {}
    for s in maps:
        for layer, head, _ in top_heads(s, k):
            heads.setdefault((layer, head))
    rows = []
    for layer, head in heads:
        cells = []
        for s in maps:
            r, _, n = ranked[s.key]
            v = s.values[layer, head]
            cells.append({"value": finite(v), "rank": int(r[layer, head]) or None, "n": n,
                          "text": s.meaning.describe(float(v)) if s.meaning and np.isfinite(v) else "not measured"})
        mean_rank = float(np.mean([c["rank"] or (c["n"] + 1) for c in cells]))
        rows.append({"head": head_id(layer, head), "cells": cells, "mean_rank": finite(mean_rank, 3),
                     "in_top": sum(1 for c in cells if c["rank"] and c["rank"] <= k)})
    rows.sort(key=lambda r: (r["mean_rank"], r["head"]))
    return rows[:TOP_ROWS]


def task_panels(series: list[Series]) -> list[dict[str, Any]]:
    """One panel per task that has sign-aligned causal maps (ablation, patching, attribution, DLA, ...)."""
    prim = [s for s in primary_series(series) if s.kind in CAUSAL_KINDS and aligned(s)]
    tasks = list(dict.fromkeys(s.task or "" for s in prim))
    out = []
    for task in tasks:
        maps = sorted((s for s in prim if (s.task or "") == task), key=lambda s: (CAUSAL_KINDS.index(s.kind), s.method))
        agreement = method_agreement(maps)
        k = agreement["k"]
        shown = {s.key for s in maps}
        extra = [s.key for s in series if (s.task or "") == task and s.kind in CAUSAL_KINDS and s.key not in shown]
        out.append({
            "task": task or "(no task)",
            "anchor": task_anchor(task),
            "maps": [{"key": s.key, "label": s.label, "kind": s.kind, "method": s.method, "metric": s.metric,
                      "run": s.run_id, "n": s.n, "quantity": s.meaning.quantity if s.meaning else "",
                      "importance": s.meaning.importance if s.meaning else "",
                      "supports": s.meaning.supports if s.meaning else "", "unit": s.meaning.unit if s.meaning else ""}
                     for s in maps],
            "scale": maps[0].scale,
            "agreement": agreement,
            "top": _top_table(maps, k),
            "k": k,
            "extra": extra,
        })
    return out
