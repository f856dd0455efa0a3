"""The IOI circuit section: per ``ioi_circuit`` run, the roles, the tests against random heads, the held-out
faithfulness and a drawing of the circuit (inline SVG: heads as nodes placed by layer (x) and role (y),
edges from the path-patching tests, the name movers' direct paths into a "logits" node). No torch here.

The SVG is built as text with every atlas string escaped (:func:`html.escape`), no scripts, no external
references and no style attributes (colours are SVG presentation attributes), so the report's CSP holds.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
from markupsafe import Markup

from headmine.atlas import Atlas

ARTIFACT = "ioi_circuit"
ROLE_ORDER = ("previous_token", "duplicate_token", "induction", "s_inhibition", "negative_name_mover",
              "backup_name_mover", "name_mover")
"""Lanes of the drawing, bottom (early in the circuit) to top (the logits' end)."""
ROLE_COLOURS = {"name_mover": "#1a7f37", "backup_name_mover": "#7fbf7b", "negative_name_mover": "#d62728",
                "s_inhibition": "#9467bd", "induction": "#1f77b4", "duplicate_token": "#17becf",
                "previous_token": "#ff7f0e"}
INPUT_COLOURS = {"q": "#9467bd", "k": "#ff7f0e", "v": "#1f77b4", "direct": "#444444"}


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def circuit_svg(summary: Mapping[str, Any], *, width: int = 880) -> Markup:
    """The circuit as a self-contained SVG element (escaped text only)."""
    n_layers = int(summary.get("n_layers") or 1)
    roles = summary.get("roles") if isinstance(summary.get("roles"), Mapping) else {}
    lanes = [r for r in ROLE_ORDER if roles.get(r)]
    lane_h, left, top, right = 64, 150, 24, 90
    height = top + lane_h * max(1, len(lanes)) + 40
    span = width - left - right

    def x_of(layer: int) -> float:
        return left + span * (layer + 0.5) / n_layers

    pos: dict[str, tuple[float, float]] = {}
    nodes: list[str] = []
    for i, role in enumerate(reversed(lanes)):
        y = top + lane_h * i + lane_h / 2
        nodes.append(f'<text x="8" y="{y + 4:.1f}" font-size="12" fill="{ROLE_COLOURS.get(role, "#333")}">'
                     f'{_e(role.replace("_", " "))}</text>')
        per_layer: dict[int, int] = {}
        for name in roles.get(role, []):
            try:
                layer = int(str(name).split("H")[0].lstrip("L"))
            except ValueError:
                continue
            k = per_layer.get(layer, 0)
            per_layer[layer] = k + 1
            x, yy = x_of(layer), y + (0, 18, -18, 36, -36)[k % 5]
            pos[str(name)] = (x, yy)
            nodes.append(f'<g><title>{_e(name)}: {_e(role.replace("_", " "))}</title>'
                         f'<circle cx="{x:.1f}" cy="{yy:.1f}" r="9" fill="{ROLE_COLOURS.get(role, "#999")}" '
                         f'stroke="#222" stroke-width="0.6"/>'
                         f'<text x="{x:.1f}" y="{yy - 12:.1f}" font-size="10" text-anchor="middle">{_e(name)}</text></g>')
    lx, ly = width - right / 2, top + lane_h / 2
    nodes.append(f'<g><title>logits (logit difference IO − S at END)</title><rect x="{lx - 30:.1f}" y="{ly - 12:.1f}" '
                 f'width="60" height="24" rx="4" fill="#eee" stroke="#222"/>'
                 f'<text x="{lx:.1f}" y="{ly + 4:.1f}" font-size="11" text-anchor="middle">logits</text></g>')
    pos["logits"] = (lx - 30, ly)
    edges: list[str] = []
    for e in summary.get("edges") or []:
        if not isinstance(e, Mapping) or str(e.get("from")) not in pos or str(e.get("to")) not in pos:
            continue
        (x1, y1), (x2, y2) = pos[str(e["from"])], pos[str(e["to"])]
        eff = _num(e.get("effect"))
        w = 0.8 + min(4.0, 20 * abs(eff)) if eff is not None else 1.0
        colour = INPUT_COLOURS.get(str(e.get("input")), "#888")
        label = f"{e['from']} → {e['to']} ({e.get('input')})" + (f": {eff:+.3f}" if eff is not None else "")
        edges.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                     f'stroke-width="{w:.2f}" stroke-opacity="0.55"><title>{_e(label)}</title></line>')
    axis = [f'<line x1="{left}" y1="{height - 26}" x2="{width - right}" y2="{height - 26}" stroke="#999"/>']
    step = max(1, n_layers // 10)
    for layer in range(0, n_layers, step):
        axis.append(f'<text x="{x_of(layer):.1f}" y="{height - 10}" font-size="10" text-anchor="middle">L{layer}</text>')
    legend = " · ".join(f"{k}: path patching into {v}" for k, v in (("q", "queries"), ("k", "keys"), ("v", "values")))
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ioi-circuit" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" aria-label="{_e("IOI circuit of " + str(summary.get("model", "")))}">'
        f'<desc>{_e(legend)}</desc>' + "".join(edges) + "".join(nodes) + "".join(axis) + "</svg>")


def ioi_circuit_runs(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per run that stores an ``ioi_circuit`` artifact, newest first: roles, tests vs random heads,
    faithfulness, thresholds, notes and the drawing."""
    out: list[dict[str, Any]] = []
    for run_id in sorted(runs["id"], reverse=True):
        if ARTIFACT not in atlas.artifact_names(int(run_id)):
            continue
        s = atlas.artifact(int(run_id), ARTIFACT)
        if not isinstance(s, Mapping):
            continue
        vs = s.get("vs_random") if isinstance(s.get("vs_random"), Mapping) else {}
        role_types = s.get("role_types") if isinstance(s.get("role_types"), Mapping) else {}
        roles = s.get("roles") if isinstance(s.get("roles"), Mapping) else {}
        rows = []
        for role in (*reversed(ROLE_ORDER), "direct_effect"):
            heads = roles.get(role) if role != "direct_effect" else s.get("direct_effect_heads")
            v = vs.get(role) if isinstance(vs.get(role), Mapping) else {}
            rows.append({"role": role.replace("_", " "), "type": str(role_types.get(role, "Direct-Effect Head")),
                         "heads": [str(h) for h in heads or []], "delta": _num(v.get("delta_ld", v.get("sum_abs_dla"))),
                         "ci": list(v.get("delta_ld_ci", v.get("sum_abs_dla_ci")) or [None, None]),
                         "random": _num(v.get("random_mean")), "beats": v.get("beats_random")})
        faith = s.get("faithfulness") if isinstance(s.get("faithfulness"), Mapping) else {}
        out.append({"run": int(run_id), "anchor": f"ioi-{int(run_id)}", "rows": rows, "faith": dict(faith),
                    "random_circuits": dict(faith.get("random_circuits") or {}),
                    "completeness": [dict(c) for c in faith.get("completeness") or [] if isinstance(c, Mapping)],
                    "thresholds": {str(k): _num(v) for k, v in (s.get("thresholds") or {}).items()},
                    "ld_fit": _num(s.get("ld_fit")), "ld_heldout": _num(s.get("ld_heldout")),
                    "notes": [str(n) for n in s.get("notes") or []], "svg": circuit_svg(s)})
    return out
