"""Read an atlas into the plain data one model's page shows. No torch, no HTML here.

Everything is generic over ``(kind, task, method, metric)``: any head-level score series a new
method writes becomes a heatmap, enters the agreement table and shows on the head pages. A few
artifacts get specific views when present (see ``headmine.atlas.artifacts.ARTIFACT_CONVENTIONS``).
The pieces: ``series`` (score maps, agreement), ``labels`` (labels, roles, head-type sections),
``runs`` (opening, provenance, geometry), ``views`` (artifact views).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from headmine.atlas import Atlas
from headmine.report.labels import head_labels, head_roles, head_type_sections, papers_by_type
from headmine.report.runs import model_geometry, require_model, run_rows
from headmine.report.series import Series, other_scores, primary_series, rank_agreement, series_from
from headmine.report.views import attention_examples, causal_checks, curves, layer_profiles


@dataclass
class ModelData:
    """Everything one model's page shows."""

    model: str
    n_layers: int
    n_heads: int
    geometry: dict[str, Any]
    runs: list[dict[str, Any]]
    series: list[Series]
    primary: list[str]
    agreement: dict[str, Any]
    labels: dict[str, list[dict[str, Any]]]
    roles: dict[str, dict[str, Any]]
    head_types: list[dict[str, Any]]
    causal_checks: list[dict[str, Any]]
    other_scores: list[dict[str, Any]]
    other_total: int
    curves: list[dict[str, Any]]
    attn: dict[str, Any]
    papers_by_type: dict[str, list[dict[str, Any]]]
    notes: list[str] = field(default_factory=list)

    def page_json(self) -> dict[str, Any]:
        """What the page's script reads (every string in it is data, never markup)."""
        return {
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "series": [s.to_json() for s in self.series],
            "labels": self.labels,
            "roles": self.roles,
            "curves": self.curves,
            "attn": self.attn,
            "papers": self.papers_by_type,
            "agreement": self.agreement,
        }


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
    series = series_from(head_scores, n_l, n_h)
    prim = primary_series(series)
    label_map = head_labels(labels)
    papers = papers_by_type()
    other, other_total = other_scores(scores)
    attn, notes = attention_examples(atlas, runs, n_l, n_h)
    if not series:
        notes.append("no head-level scores in this model's runs yet: heatmaps and the agreement table are empty")
    catalog = atlas.catalog_head_types()  # the detector links as the atlas's writers registered them
    stored_links = dict(zip(catalog["name"], catalog["detectors"], strict=True))
    sections = head_type_sections(series, label_map, papers, stored_links=stored_links)
    shown = {d["head_type"] for items in label_map.values() for d in items} | {t["name"] for t in sections}
    return ModelData(
        model=model,
        n_layers=n_l,
        n_heads=n_h,
        geometry=geo,
        runs=run_rows(atlas, runs),
        series=series,
        primary=[s.key for s in prim],
        agreement=rank_agreement(prim),
        labels=label_map,
        roles=head_roles(label_map),
        head_types=sections,
        causal_checks=causal_checks(atlas, runs),
        other_scores=other,
        other_total=other_total,
        curves=curves(atlas, runs) + layer_profiles(scores),
        attn=attn,
        papers_by_type={k: v for k, v in papers.items() if k in shown},
        notes=notes,
    )
