"""Head labels and head-type cards: each head's labels (strongest first), and one card per head type
(its causal verdict, confirmed heads, each linked detector's top heads, papers)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from headmine.atlas import load_head_types, load_papers
from headmine.atlas.artifacts import finite
from headmine.report.series import Series, head_id, primary_series, top_heads

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


def type_anchor(name: str) -> str:
    """The page anchor of a head type's card: ``type-induction-head``."""
    return "type-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _linked_detectors(name: str, types: Mapping[str, Any], stored_links: Mapping[str, Sequence[str]],
                      detector_types: Mapping[str, str]) -> list[str]:
    ht = types.get(name)
    linked = [link.detector for link in ht.detectors] if ht is not None else []
    linked += list(stored_links.get(name, ()))
    linked += [d for d, t in detector_types.items() if t == name]
    return list(dict.fromkeys(linked))


def head_type_sections(series: list[Series], labels: dict[str, list[dict[str, Any]]],
                       evidence: Mapping[str, dict[str, Any]], checks: list[dict[str, Any]],
                       papers: dict[str, list[dict[str, Any]]], top_k: int = 5, *,
                       stored_links: Mapping[str, Sequence[str]] | None = None,
                       detector_types: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One card per head type that has labelled heads or a linked detector with scores, best first.

    A card says whether the type is confirmed (a linked detector's causal check passed), lists the
    heads confirmed in it, and per detector its top heads by that detector's own score (sorted, one
    metric per list, each marked labelled / confirmed). A head type's detectors are the links
    registered in this process, ``stored_links`` (the atlas's catalog tables) and ``detector_types``
    (detector -> head type, from the scan's ``detectors`` artifact), and the methods of its labels. Order: confirmed types by their
    best margin, then failed checks, then untested types; ``group`` is ``"labelled"`` for types with
    a head above threshold and ``"scores_only"`` otherwise.
    """
    types = load_head_types()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for hid, items in labels.items():
        for d in items:
            if not d["kind"].startswith("chg"):
                by_type.setdefault(d["head_type"], []).append({**d, "head": hid})
    checks_by = {c["detector"]: c for c in checks}
    methods: dict[str, Series] = {}
    for s in primary_series(series):
        if s.kind == "scan":
            methods.setdefault(s.method, s)
    det_types = dict(detector_types or {})
    names = list(types) + sorted((set(by_type) | set(det_types.values())) - set(types))
    out = []
    for name in names:
        ht = types.get(name)
        linked = _linked_detectors(name, types, stored_links or {}, det_types)
        linked += [m for m in dict.fromkeys(d["method"] for d in by_type.get(name, [])) if m not in linked]
        confirmed_heads = sorted(
            ({"head": hid, **next(c for c in ev["confirmed"] if c["head_type"] == name)}
             for hid, ev in evidence.items() if any(c["head_type"] == name for c in ev["confirmed"])),
            key=lambda d: -(d["value"] if d["value"] is not None else -1e300))
        confirmed_ids = {d["head"] for d in confirmed_heads}
        labelled_ids = {d["head"] for d in by_type.get(name, [])}
        detector_tops = []
        for detector in linked:
            s = methods.get(detector)
            if s is None:
                continue
            detector_tops.append({
                "method": s.method, "metric": s.metric, "key": s.key,
                "heads": [{"head": head_id(layer, head), "value": finite(v),
                           "confirmed": head_id(layer, head) in confirmed_ids,
                           "labelled": head_id(layer, head) in labelled_ids}
                          for layer, head, v in top_heads(s, top_k)],
            })
        if not labelled_ids and not detector_tops:
            continue
        type_checks = [checks_by[d] for d in linked if d in checks_by]
        verdicts = {c["verdict"] for c in type_checks}
        verdict = "confirmed" if "confirmed" in verdicts else "failed" if "failed" in verdicts else "untested"
        best = max((c["margin_z"] for c in type_checks if c["verdict"] == "confirmed" and c["margin_z"] is not None),
                   default=None)
        stage = ht.stage if ht is not None else next((d["stage"] for d in by_type.get(name, []) if d["stage"]), None)
        out.append({
            "name": name,
            "anchor": type_anchor(name),
            "stage": stage,
            "stage_code": STAGE_CODES.get(stage or "", ""),
            "function": ht.function if ht is not None else
            f"label written by {', '.join(sorted({d['method'] for d in by_type.get(name, [])})) or 'a detector'}",
            "detectors": linked,
            "verdict": verdict,
            "best_margin_z": best,
            "checks": type_checks,
            "confirmed": confirmed_heads[:12],
            "n_confirmed": len(confirmed_ids),
            "n_labelled": len(labelled_ids),
            "detector_tops": detector_tops,
            "papers": papers.get(name, []),
            "group": "labelled" if labelled_ids else "scores_only",
        })
    order = {"confirmed": 0, "failed": 1, "untested": 2}
    out.sort(key=lambda t: (order[t["verdict"]], -(t["best_margin_z"] or 0), -t["n_labelled"], t["name"]))
    return out
