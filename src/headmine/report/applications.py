"""The applications section: one card per application run (steering, function vectors, safety heads,
injection detection, KV budget, pruning), read from its ``apply_summary`` artifact. No torch here.

Generic over applications: a run is shown when it stores an ``apply_summary``; its before/after
tables are rows with ``split, condition, metric, n, value, ci`` and, for paired rows, ``delta,
delta_ci, significant`` (``headmine.apply.evaluation.effect_row``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from headmine.atlas import Atlas
from headmine.atlas.artifacts import APPLY_SUMMARY


def _row(raw: Mapping[str, Any]) -> dict[str, Any]:
    ci = raw.get("ci") or [None, None]
    dci = raw.get("delta_ci") or [None, None]
    return {"split": str(raw.get("split", "")), "condition": str(raw.get("condition", "")),
            "metric": str(raw.get("metric", "")), "n": raw.get("n"), "value": raw.get("value"),
            "lo": ci[0], "hi": ci[1], "delta": raw.get("delta"), "delta_lo": dci[0], "delta_hi": dci[1],
            "significant": raw.get("significant")}


def application_runs(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per run that stores an ``apply_summary``, newest first: title, paper, heads, chosen
    parameters, tables (name -> rows), notes and data sizes."""
    out: list[dict[str, Any]] = []
    for run_id, kind in sorted(zip(runs["id"], runs["kind"], strict=True), reverse=True):
        if APPLY_SUMMARY not in atlas.artifact_names(int(run_id)):
            continue
        s = atlas.artifact(int(run_id), APPLY_SUMMARY)
        if not isinstance(s, Mapping):
            continue
        tables = s.get("tables") if isinstance(s.get("tables"), Mapping) else {}
        out.append({
            "run": int(run_id), "kind": str(kind), "anchor": f"apply-{int(run_id)}",
            "title": str(s.get("title") or kind), "paper": str(s.get("paper") or ""),
            "heads": [str(h) for h in s.get("heads") or []],
            "chosen": {str(k): v for k, v in (s.get("chosen") or {}).items()},
            "tables": {str(name): [_row(r) for r in rows if isinstance(r, Mapping)]
                       for name, rows in tables.items() if isinstance(rows, list)},
            "notes": [str(n) for n in s.get("notes") or []],
            "data": {str(k): v for k, v in (s.get("data") or {}).items()},
        })
    return out
