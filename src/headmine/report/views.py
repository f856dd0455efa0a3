"""The views of specific artifacts (decoded with :mod:`headmine.atlas.artifacts`): the causal
confirmation table, training and ablation curves, per-layer profiles, attention examples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas import Atlas
from headmine.atlas.artifacts import (
    ATTN_EXAMPLES,
    CAUSAL_CHECKS,
    TARGETED_ABLATION,
    curve_name,
    finite,
    parse_attn_examples,
    parse_causal_checks,
    parse_curve,
    parse_targeted_ablation,
)
from headmine.report.evidence import describe_check

MAX_CURVE_POINTS = 240


def causal_checks(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The causal confirmation table of the newest run that has a ``causal`` artifact, each row with
    its expected sign, pass rule and margin (:func:`~headmine.report.evidence.describe_check`),
    confirmed first and then by margin."""
    for run_id in sorted(runs["id"], reverse=True):
        if CAUSAL_CHECKS not in atlas.artifact_names(int(run_id)):
            continue
        value = atlas.artifact(int(run_id), CAUSAL_CHECKS)
        if not isinstance(value, Mapping):
            continue
        rows = [describe_check({"run": int(run_id), **row}) for row in parse_causal_checks(value)]
        order = {"confirmed": 0, "failed": 1, "no verdict": 2}
        rows.sort(key=lambda r: (order[r["verdict"]], -(r["margin_z"] if r["margin_z"] is not None else -1e9)))
        return rows
    return []


def _downsample(arr: np.ndarray) -> list[list[float | None]]:
    arr = np.asarray(arr, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] > MAX_CURVE_POINTS:
        idx = np.unique(np.linspace(0, arr.shape[0] - 1, MAX_CURVE_POINTS).round().astype(int))
        x = idx
        arr = arr[idx]
    else:
        x = np.arange(arr.shape[0])
    return [[int(x[i]), *[finite(v) for v in arr[i]]] for i in range(arr.shape[0])]



def curves(atlas: Atlas, runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Line charts of the curve and targeted-ablation artifacts of the newest run per (kind, task)."""
    out = []
    newest: dict[tuple[str, Any], int] = {}
    for r in runs.itertuples(index=False):
        newest[(r.kind, r.task)] = int(r.id)
    for run_id in sorted(newest.values()):
        kind = runs.loc[runs["id"] == run_id, "kind"].iloc[0]
        for name in atlas.artifact_names(run_id):
            curve = curve_name(name)
            if curve is not None:
                arr = parse_curve(atlas.artifact(run_id, name))
                if arr is not None:
                    out.append({"run": run_id, "kind": str(kind), "name": curve,
                                "x": "update", "points": _downsample(arr)})
            elif name == TARGETED_ABLATION:
                parsed = parse_targeted_ablation(atlas.artifact(run_id, name))
                if parsed is not None:
                    ks, deltas = parsed
                    names = list(deltas)
                    pts = [[ks[i], *[finite(deltas[n][i]) for n in names]] for i in range(len(ks))]
                    out.append({"run": run_id, "kind": str(kind), "name": "targeted ablation",
                                "x": "k heads", "legend": names, "points": pts})
    return out


def layer_profiles(scores: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-layer line charts for non-head components (mlp / layer / embed rows with >= 2 layers)."""
    df = scores[scores["component"].isin(["mlp", "layer", "embed"])]
    out: list[dict[str, Any]] = []
    for (kind, method, metric, comp), grp in df.groupby(["kind", "method", "metric", "component"], sort=False):
        grp = grp[grp["run_id"] == grp["run_id"].max()]
        per_layer = grp.groupby("layer")["value"].mean().sort_index()
        if len(per_layer) < 2:
            continue
        out.append({"run": int(grp["run_id"].iloc[0]), "kind": str(kind), "name": f"{method} · {metric} ({comp})",
                    "x": "layer", "points": [[int(layer), finite(v)] for layer, v in per_layer.items()]})
    return out



def attention_examples(atlas: Atlas, runs: pd.DataFrame, n_l: int, n_h: int) -> tuple[dict[str, Any], list[str]]:
    """The attention examples of every run that stored them, merged (newest first: an example prompt
    stored twice keeps the newest run's patterns and promoted tokens), and any warnings about them."""
    examples: list[dict[str, Any]] = []
    index: dict[tuple[Any, ...], int] = {}
    per_head: dict[str, dict[int, Any]] = {}
    promoted: dict[str, dict[int, Any]] = {}
    notes: list[str] = []
    newest = None
    for run_id in sorted(runs["id"], reverse=True):
        if ATTN_EXAMPLES not in atlas.artifact_names(int(run_id)):
            continue
        data, run_notes = parse_attn_examples(atlas.artifact(int(run_id), ATTN_EXAMPLES), n_l, n_h)
        notes += run_notes
        if not data:
            continue
        newest = newest or int(run_id)
        for e_idx, ex in enumerate(data["examples"]):
            key = (ex["name"], ex["text"], tuple(ex["tokens"]))
            if key not in index:
                index[key] = len(examples)
                examples.append(ex)
            slot = index[key]
            for hid, mats in data["patterns"].items():
                slots = per_head.setdefault(hid, {})
                if e_idx < len(mats) and mats[e_idx] is not None:
                    slots.setdefault(slot, mats[e_idx])
            for hid, lists in data.get("promotes", {}).items():
                if e_idx < len(lists) and lists[e_idx] is not None:
                    promoted.setdefault(hid, {}).setdefault(slot, lists[e_idx])
    if newest is None:
        return {}, notes
    patterns = {hid: [slots.get(i) for i in range(len(examples))] for hid, slots in per_head.items()}
    promotes = {hid: [slots.get(i) for i in range(len(examples))] for hid, slots in promoted.items()}
    return {"examples": examples, "patterns": patterns, "promotes": promotes, "run": newest}, notes
