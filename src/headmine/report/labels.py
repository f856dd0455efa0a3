"""Head labels and roles: each head's labels (strongest first), its role on the map, and one section
per survey head type (labelled heads, each linked detector's top heads, papers)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas import load_head_types, load_papers
from headmine.atlas.artifacts import finite
from headmine.report.series import Series, head_id, primary_series

STAGE_CODES = {
    "Knowledge Recalling": "KR",
    "In-Context Identification": "ICI",
    "Latent Reasoning": "LR",
    "Expression Preparation": "EP",
}


def papers_by_type() -> dict[str, list[dict[str, Any]]]:
    """The catalog's papers per head type, as the head-type sections show them."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in load_papers():
        entry = {
            "title": p.title,
            "date": p.date,
            "venue": p.venue,
            "url": f"https://arxiv.org/abs/{p.arxiv_id}" if p.arxiv_id else None,
            "summary": p.summary or p.key_result,
        }
        for name in p.head_types:
            out.setdefault(name, []).append(entry)
    return out



def _strength(value: float, threshold: float | None) -> float:
    if value is None or not math.isfinite(value):
        return float("-inf")
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        return value / threshold
    return value


def head_labels(labels: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Labels of the newest run per (kind, task, method), per head, strongest first."""
    if labels.empty:
        return {}
    df = labels.copy()
    df["task"] = df["task"].astype(object).where(df["task"].notna(), "")
    newest = df.groupby(["kind", "task", "method"])["run_id"].transform("max")
    df = df[df["run_id"] == newest]
    types = load_head_types()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in df.itertuples(index=False):
        name = str(r.head_type)
        stage = r.stage if isinstance(r.stage, str) else None
        if stage is None and name in types:
            stage = types[name].stage
        thr = None if r.threshold is None or (isinstance(r.threshold, float) and math.isnan(r.threshold)) else float(r.threshold)
        value = float(r.value) if r.value is not None else float("nan")
        out.setdefault(head_id(r.layer, r.head), []).append(
            {
                "head_type": name,
                "canonical": name in types,
                "stage": stage,
                "stage_code": STAGE_CODES.get(stage or "", ""),
                "method": str(r.method),
                "kind": str(r.kind),
                "value": finite(value),
                "threshold": finite(thr),
                "strength": finite(_strength(value, thr)),
                "note": r.note if isinstance(r.note, str) else None,
                "run": int(r.run_id),
            }
        )
    for items in out.values():
        items.sort(key=lambda d: (not d["canonical"], -(d["strength"] if d["strength"] is not None else -1e300)))
    return out


def head_roles(labels: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each labelled head's role on the map: its strongest label (short name, stage) and up to 3 others."""
    roles = {}
    for hid, items in labels.items():
        top = items[0]
        name = top["head_type"]
        short = name[:-5] if name.endswith(" Head") else name
        roles[hid] = {
            "head_type": name,
            "short": short if len(short) <= 14 else short[:13] + "…",
            "stage": top["stage"],
            "stage_code": top["stage_code"],
            "others": [d["head_type"] for d in items[1:4]],
        }
    return roles


def head_type_sections(series: list[Series], labels: dict[str, list[dict[str, Any]]],
                       papers: dict[str, list[dict[str, Any]]], top_k: int = 5, *,
                       stored_links: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    """One section per head type that has labelled heads or a linked detector with scores.

    A head type's detectors are the links registered in this process plus ``stored_links`` (head
    type -> detector names, as the atlas's catalog tables hold them): the report needs no detector
    imported to show the detectors that wrote the atlas.
    """
    by_type: dict[str, list[dict[str, Any]]] = {}
    for hid, items in labels.items():
        for d in items:
            by_type.setdefault(d["head_type"], []).append({**d, "head": hid})
    methods: dict[str, Series] = {}
    for s in primary_series(series):
        methods.setdefault(s.method, s)
    out = []
    types = load_head_types()
    for name, ht in types.items():
        labelled = sorted(by_type.get(name, []), key=lambda d: -(d["strength"] or 0))
        linked = [link.detector for link in ht.detectors]
        linked += [d for d in dict.fromkeys((stored_links or {}).get(name, ())) if d not in linked]
        detector_tops = []
        for detector in linked:
            s = methods.get(detector)
            if s is None:
                continue
            flat = [(v, layer, head) for (layer, head), v in np.ndenumerate(s.values) if np.isfinite(v)]
            flat.sort(reverse=True)
            detector_tops.append(
                {"method": s.method, "metric": s.metric,
                 "heads": [{"head": head_id(layer, head), "value": finite(v)} for v, layer, head in flat[:top_k]]}
            )
        if not labelled and not detector_tops:
            continue
        seen: set[str] = set()
        top_labelled = []
        for d in labelled:
            if d["head"] not in seen:
                seen.add(d["head"])
                top_labelled.append(d)
        out.append(
            {
                "name": name,
                "stage": ht.stage,
                "stage_code": STAGE_CODES.get(ht.stage, ""),
                "function": ht.function,
                "detectors": sorted(set(linked)),
                "labelled": top_labelled[:top_k],
                "n_labelled": len(seen),
                "detector_tops": detector_tops,
                "papers": papers.get(name, []),
            }
        )
    extra = sorted(set(by_type) - set(types))
    for name in extra:
        labelled = sorted(by_type[name], key=lambda d: -(d["strength"] or 0))
        out.append({"name": name, "stage": labelled[0]["stage"], "stage_code": labelled[0]["stage_code"],
                    "function": f"label written by {', '.join(sorted({d['method'] for d in labelled}))}",
                    "detectors": [], "labelled": labelled[:top_k], "n_labelled": len(labelled),
                    "detector_tops": [], "papers": []})
    return out

