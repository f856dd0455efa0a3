"""The edge-circuit section: one card per edge-attribution run (``eap_summary`` artifact), with its
faithfulness and completeness curves against the number of edges drawn as inline SVG (geometry
computed here, numbers only; every text goes through the template's escaping). No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from headmine.atlas import Atlas

EAP_SUMMARY = "eap_summary"
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 460, 230, 44, 12, 12, 36


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def curve_chart(points: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """SVG coordinates of the two curves (x: edges on a log axis, y: the normalised metric), the axis
    ticks and the plot box; None without at least one point with a positive edge count."""
    pts = [p for p in points if (_finite(p.get("n")) or 0) > 0]
    if not pts:
        return None
    ns = [float(p["n"]) for p in pts]
    ys = [v for p in pts for v in (_finite(p.get("faithfulness")), _finite(p.get("completeness"))) if v is not None]
    lo, hi = min([0.0, *ys]), max([1.0, *ys])
    x0, x1 = math.log(min(ns)), math.log(max(ns))
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(n: float) -> float:
        return LEFT + (w * (math.log(n) - x0) / (x1 - x0) if x1 > x0 else w / 2)

    def y(v: float) -> float:
        return TOP + h * (hi - v) / (hi - lo)

    def line(key: str) -> str:
        return " ".join(f"{x(float(p['n'])):.1f},{y(v):.1f}" for p in pts if (v := _finite(p.get(key))) is not None)

    yticks = sorted({lo, 0.0, 0.5, 1.0, hi})
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "bottom": HEIGHT - BOTTOM,
            "faithfulness": line("faithfulness"), "completeness": line("completeness"),
            "xticks": [{"x": round(x(n), 1), "label": f"{int(n)}"} for n in ns],
            "yticks": [{"y": round(y(v), 1), "label": f"{v:.2g}"} for v in yticks]}


def edge_circuit_runs(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per run that stores an ``eap_summary``, newest first: method, graph, cost, curves (table
    and chart), the exact-patching check and the top edges."""
    out: list[dict[str, Any]] = []
    for run_id in sorted((int(r) for r in runs["id"]), reverse=True):
        if EAP_SUMMARY not in atlas.artifact_names(run_id):
            continue
        s = atlas.artifact(run_id, EAP_SUMMARY)
        if not isinstance(s, Mapping):
            continue
        points = [p for p in s.get("curves") or [] if isinstance(p, Mapping)]
        check = s.get("check") if isinstance(s.get("check"), Mapping) else {}
        rows = zip(check.get("edges") or [], check.get("estimate") or [], check.get("exact") or [], check.get("top") or [],
                   strict=False)
        steps = s.get("steps")
        out.append({
            "run": run_id, "anchor": f"edges-{run_id}",
            "title": "EAP" if not steps else f"EAP-IG, {steps} steps",
            "metric": str(s.get("metric") or ""),
            "graph": {str(k): v for k, v in (s.get("graph") or {}).items()},
            "prompts": {str(k): v for k, v in (s.get("prompts") or {}).items()},
            "held_out": {str(k): v for k, v in (s.get("held_out") or {}).items()},
            "cost": {str(k): v for k, v in (s.get("cost") or {}).items()},
            "points": [{k: p.get(k) for k in ("n", "kept", "circuit", "faithfulness", "completeness")} for p in points],
            "chart": curve_chart(points),
            "check": {"pearson": check.get("pearson"), "pearson_top": check.get("pearson_top"),
                      "pearson_random": check.get("pearson_random"), "sign_agreement": check.get("sign_agreement"),
                      "rows": [{"edge": str(e), "estimate": a, "exact": b, "top": bool(t)} for e, a, b, t in rows]},
            "top_edges": [{"edge": str(e.get("edge")), "score": e.get("score")}
                          for e in (s.get("top_edges") or [])[:20] if isinstance(e, Mapping)],
        })
    return out
