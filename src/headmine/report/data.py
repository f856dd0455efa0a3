"""Read an atlas into the plain data one model's page shows. No torch, no HTML here.

Everything is generic over ``(kind, task, method, metric)``: any head-level score series a new
method writes becomes a heatmap, enters its task's agreement table and shows on the head pages. A
few artifacts get specific views when present (see ``headmine.atlas.artifacts.ARTIFACT_CONVENTIONS``).
The pieces: ``series`` (score maps, ranks, scales, agreement), ``meaning`` (what a sign means),
``evidence`` (confirmed roles vs evidence), ``labels`` (labels, head-type cards), ``tasks`` (per-task
panels), ``chg`` (the CHG section), ``runs`` (opening, provenance, geometry), ``views`` (artifact views), ``applications`` (heads put to work).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headmine.atlas import Atlas
from headmine.report.applications import application_runs
from headmine.report.chg import CHG_DEFINITIONS, chg_runs
from headmine.report.edges import edge_circuit_runs
from headmine.report.evidence import head_evidence, role_map
from headmine.report.ioi_circuit import ioi_circuit_runs
from headmine.report.labels import head_labels, head_type_sections, papers_by_type
from headmine.report.runs import model_geometry, model_header, require_model, run_rows
from headmine.report.series import (
    Series,
    method_top_heads,
    other_scores,
    primary_series,
    scale_groups,
    series_from,
)
from headmine.report.tasks import task_panels
from headmine.report.views import attention_examples, causal_checks, curves, layer_profiles

TOP_FOR_ATTENTION = 20
"""A head in any method's top this-many should have attention examples (the head page says when not)."""


@dataclass
class ModelData:
    """Everything one model's page shows."""

    model: str
    n_layers: int
    n_heads: int
    geometry: dict[str, Any]
    header: dict[str, Any]
    runs: list[dict[str, Any]]
    series: list[Series]
    primary: list[str]
    labels: dict[str, list[dict[str, Any]]]
    evidence: dict[str, dict[str, Any]]
    roles: dict[str, dict[str, Any]]
    head_types: list[dict[str, Any]]
    causal_checks: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    chg: list[dict[str, Any]]
    seed_maps: dict[str, Any]
    scales: dict[str, dict[str, Any]]
    other_scores: list[dict[str, Any]]
    other_total: int
    curves: list[dict[str, Any]]
    attn: dict[str, Any]
    papers_by_type: dict[str, list[dict[str, Any]]]
    definitions: dict[str, str]
    applications: list[dict[str, Any]] = field(default_factory=list)
    ioi: list[dict[str, Any]] = field(default_factory=list)
    edge_circuits: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_confirmed_heads(self) -> int:
        return sum(1 for r in self.roles.values() if r["status"] == "confirmed")

    @property
    def n_confirmed_types(self) -> int:
        return sum(1 for t in self.head_types if t["verdict"] == "confirmed" and t["n_confirmed"])

    @property
    def series_by_key(self) -> dict[str, Series]:
        return {s.key: s for s in self.series}

    @property
    def type_anchor_for(self) -> dict[str, str]:
        """Detector -> the anchor of the head-type card it feeds."""
        return {det: t["anchor"] for t in self.head_types for det in t["detectors"]}

    @property
    def types_confirmed(self) -> list[dict[str, Any]]:
        return [t for t in self.head_types if t["verdict"] == "confirmed" and t["n_confirmed"]]

    @property
    def chg_definitions(self) -> tuple[tuple[str, str, str], ...]:
        return CHG_DEFINITIONS

    def page_json(self) -> dict[str, Any]:
        """What the page's script reads (every string in it is data, never markup)."""
        tops = method_top_heads(self.series, TOP_FOR_ATTENTION)
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "series": [s.to_json() for s in self.series],
            "scales": self.scales,
            "seed_maps": self.seed_maps,
            "labels": self.labels,
            "evidence": self.evidence,
            "roles": self.roles,
            "tasks": [{"task": t["task"], "anchor": t["anchor"], "keys": [m["key"] for m in t["maps"]]} for t in self.tasks],
            "curves": self.curves,
            "attn": self.attn,
            "papers": self.papers_by_type,
            "tops": tops,
            "definitions": self.definitions,
        }


def _detector_info(atlas: Atlas, runs: Any) -> dict[str, Mapping[str, Any]]:
    """The newest scan's ``detectors`` artifact: detector -> {head_type, stage, task, threshold, definition}."""
    for run_id in sorted(runs.loc[runs["kind"] == "scan", "id"], reverse=True):
        if "detectors" in atlas.artifact_names(int(run_id)):
            value = atlas.artifact(int(run_id), "detectors")
            if isinstance(value, Mapping):
                return {str(k): v for k, v in value.items() if isinstance(v, Mapping)}
    return {}


def load_model_data(atlas: Atlas, model: str, *, run_ids: Iterable[int] | None = None) -> ModelData:
    """Collect one model's page data (all its runs, or only ``run_ids``)."""
    require_model(atlas, model)
    runs = atlas.runs(model=model)
    scores = atlas.scores(model=model)
    labels = atlas.labels(model=model)
    if run_ids is not None:
        keep = {int(r) for r in run_ids}
        runs = runs[runs["id"].isin(keep)]
        scores = scores[scores["run_id"].isin(keep)]
        labels = labels[labels["run_id"].isin(keep)]
    head_scores = scores[scores["component"] == "head"]
    n_l, n_h, geo = model_geometry(runs, head_scores, labels)
    detectors = _detector_info(atlas, runs)
    definitions = {k: str(v.get("definition")) for k, v in detectors.items() if v.get("definition")}
    series = series_from(head_scores, n_l, n_h, definitions)
    label_map = head_labels(labels)
    papers = papers_by_type()
    other, other_total = other_scores(scores)
    attn, notes = attention_examples(atlas, runs, n_l, n_h)
    if not series:
        notes.append("no head-level scores in this model's runs yet: heatmaps and the agreement tables are empty")
    checks = causal_checks(atlas, runs)
    chg, seed_maps = chg_runs(atlas, runs, series)
    evidence = head_evidence(label_map, checks, {c["run"]: c["converged"] for c in chg})
    catalog = atlas.catalog_head_types()  # the detector links as the atlas's writers registered them
    stored_links = dict(zip(catalog["name"], catalog["detectors"], strict=True))
    sections = head_type_sections(series, label_map, evidence, checks, papers, stored_links=stored_links,
                                  detector_types={k: str(v["head_type"]) for k, v in detectors.items() if v.get("head_type")})
    shown = {d["head_type"] for items in label_map.values() for d in items} | {t["name"] for t in sections}
    all_curves = curves(atlas, runs) + layer_profiles(scores)
    for i, c in enumerate(all_curves):
        c["idx"] = i
    scales = scale_groups(series)
    for m in seed_maps.values():
        scales.setdefault(m["scale"], {"lo": 0.0, "hi": 1.0, "unit": "gate (0–1)", "aligned": False, "n_maps": 0,
                                       "diverging": False})
    return ModelData(
        model=model,
        n_layers=n_l,
        n_heads=n_h,
        geometry=geo,
        header=model_header(runs),
        runs=run_rows(atlas, runs),
        series=series,
        primary=[s.key for s in primary_series(series)],
        labels=label_map,
        evidence=evidence,
        roles=role_map(evidence),
        head_types=sections,
        causal_checks=checks,
        tasks=task_panels(series),
        chg=chg,
        seed_maps=seed_maps,
        scales=scales,
        other_scores=other,
        other_total=other_total,
        curves=all_curves,
        attn=attn,
        papers_by_type={k: v for k, v in papers.items() if k in shown},
        definitions=definitions,
        applications=application_runs(atlas, runs),
        ioi=ioi_circuit_runs(atlas, runs),
        edge_circuits=edge_circuit_runs(atlas, runs),
        notes=notes,
    )
