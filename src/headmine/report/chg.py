"""The CHG section's data: per CHG run, its convergence verdict, the F/N/I maps, shares next to the
paper's, seed agreement, per-seed maps (behind a disclosure) and its curves.

Kept in its own module (and template ``_chg.html``) so the CHG convergence work can extend it without
touching the rest of the report. Reads, when present: ``summary.converged`` or a ``convergence``
artifact (``{"converged": bool, "stages": {...}, ...}``); without either the fit is shown as
"convergence not recorded" and its labels stay evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas import Atlas
from headmine.atlas.artifacts import finite
from headmine.report.series import Series

CHG_DEFINITIONS = (
    ("F", "facilitating", "F = G⁻: the head's gate stays open even when the fit pushes gates shut; ablating it "
     "should lower the task log-probability."),
    ("N", "interfering", "N = 1 − G⁺: the gate stays shut even when the fit pushes gates open; ablating it "
     "should raise the task log-probability."),
    ("I", "irrelevant", "I = G⁺ · (1 − G⁻): the gate follows whichever way the fit pushes it; ablating it "
     "should change little."),
)
"""(score, label, definition): the taxonomy of Cheng et al. (Table 1); a head is labelled at score ≥ 0.5."""

PAPER_SHARES = {"irrelevant": 0.63, "facilitating": 0.256}
"""Shares of heads with score ≥ 0.5 the paper reports (BIG-Bench syntax), for comparison only."""

SEED_MAP_SCORES = ("F", "N", "I")


def _converged(summary: Mapping[str, Any], convergence: Any) -> bool | None:
    for src in (convergence, summary):
        if isinstance(src, Mapping) and isinstance(src.get("converged"), bool):
            return bool(src["converged"])
    return None


def _diagnostics(convergence: Any) -> dict[str, Any]:
    """A ``convergence`` artifact as a stage x measure table (its scalar per-stage numbers) plus the
    run-wide numbers and the stated reasons; empty parts when absent."""
    out: dict[str, Any] = {"columns": [], "rows": [], "overall": [], "reasons": ""}
    if not isinstance(convergence, Mapping):
        return out
    stages = convergence.get("stages")
    for stage, vals in (stages.items() if isinstance(stages, Mapping) else []):
        if not isinstance(vals, Mapping):
            continue
        row = {"stage": str(stage), "values": {}}
        for name, v in vals.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row["values"][str(name)] = v
                if name not in out["columns"]:
                    out["columns"].append(str(name))
        out["rows"].append(row)
    for name, v in convergence.items():
        if name in ("stages", "converged", "verdict"):
            continue
        if name == "reasons" and isinstance(v, str):
            out["reasons"] = v
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out["overall"].append({"name": str(name), "value": v})
    return out


def chg_runs(atlas: Atlas, runs: pd.DataFrame, series: list[Series]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One entry per newest CHG run per (kind, task), and the per-seed maps the entries point to.

    Returns ``(sections, seed_maps)``; ``seed_maps`` maps a key to ``{"z", "label", "scale"}``.
    """
    sections: list[dict[str, Any]] = []
    seed_maps: dict[str, Any] = {}
    chg = runs[runs["kind"].astype(str).str.startswith("chg")]
    newest: dict[tuple[str, Any], int] = {}
    for r in chg.itertuples(index=False):
        newest[(str(r.kind), r.task)] = max(int(r.id), newest.get((str(r.kind), r.task), -1))
    for (kind, task), run_id in sorted(newest.items(), key=lambda kv: kv[1]):
        names = atlas.artifact_names(run_id)
        summary = atlas.artifact(run_id, "summary") if "summary" in names else {}
        summary = summary if isinstance(summary, Mapping) else {}
        convergence = atlas.artifact(run_id, "convergence") if "convergence" in names else None
        maps = {s.metric: s.key for s in series if s.run_id == run_id}
        seeds = []
        for name in SEED_MAP_SCORES:
            arr = atlas.artifact(run_id, name) if name in names else None
            if isinstance(arr, np.ndarray) and arr.ndim == 3:
                for k in range(arr.shape[0]):
                    key = f"seed{run_id}_{name}_{k}"
                    seed_maps[key] = {"z": [[finite(v) for v in row] for row in arr[k]],
                                      "label": f"{name}, seed {k}", "scale": f"{kind}:{task or ''}:gates"}
                    seeds.append({"key": key, "label": f"{name} · seed {k}"})
        shares = summary.get("shares") if isinstance(summary.get("shares"), Mapping) else {}
        agreement = summary.get("seed_agreement") if isinstance(summary.get("seed_agreement"), Mapping) else {}
        row = runs.loc[runs["id"] == run_id].iloc[0]
        params = row["params"] if isinstance(row["params"], Mapping) else {}
        sections.append({
            "run": run_id, "kind": kind, "task": task, "status": summary.get("status", row["status"]),
            "preset": params.get("preset") or params.get("name"),
            "converged": _converged(summary, convergence),
            "diagnostics": _diagnostics(convergence),
            "shares": [{"label": str(k), "share": finite(v, 3), "paper": PAPER_SHARES.get(str(k))}
                       for k, v in shares.items()],
            "agreement": [{"name": str(k), "value": finite(v, 3)} for k, v in agreement.items()],
            "main": [maps[m] for m in ("F", "N", "I") if m in maps],
            "gates": [maps[m] for m in ("G", "G_plus", "G_minus") if m in maps],
            "others": [k for m, k in maps.items() if m not in ("F", "N", "I", "G", "G_plus", "G_minus")],
            "seeds": seeds,
        })
    return sections, seed_maps
