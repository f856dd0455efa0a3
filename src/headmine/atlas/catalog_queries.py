"""Queries over the survey catalog tables an atlas holds (papers, head types, detector links)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from headmine import catalog as _catalog
from headmine.atlas.connection import AtlasConnection


class CatalogQueries(AtlasConnection):
    """The catalog as the atlas stores it (filled from :mod:`headmine.catalog` by the writer)."""

    def catalog_papers(
        self, *, head_type: str | None = None, stage: str | None = None, search: str | None = None
    ) -> pd.DataFrame:
        """Catalog papers, newest first, optionally filtered by head type (aliases resolve),
        stage (full name or KR/ICI/LR/EP) and a free-text ``search`` (every word must appear in
        the title, summary, key result, models, tasks, head types or venue; case-insensitive)."""
        clauses: list[str] = []
        params: list[Any] = []
        if head_type is not None:
            clauses.append("p.id IN (SELECT paper_id FROM head_type_papers WHERE head_type = ?)")
            params.append(_catalog.resolve_head_type(head_type))
        if stage is not None:
            clauses.append(
                "p.id IN (SELECT hp.paper_id FROM head_type_papers hp JOIN head_types h ON h.name = hp.head_type"
                " WHERE h.stage = ?)"
            )
            params.append(_catalog.normalize_stage(stage))
        if search:
            fields = (
                "(p.title || ' ' || p.summary || ' ' || p.key_result || ' ' || p.models || ' ' || p.tasks"
            )
            fields += " || ' ' || p.head_types || ' ' || p.venue)"
            for word in search.split():
                escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                clauses.append(f"{fields} LIKE ? ESCAPE '\\'")
                params.append(f"%{escaped}%")
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return self._query(
            "SELECT p.id AS paper_id, p.paper_key, p.date, p.title, p.arxiv_id, p.venue, p.head_types, p.models,"
            f" p.tasks, p.key_result, p.summary FROM papers p{where} ORDER BY p.date DESC, p.id",
            params,
        )

    def catalog_head_types(self, *, stage: str | None = None) -> pd.DataFrame:
        """Canonical head types in stage order with aliases, function, linked detectors and paper count."""
        where, params = "", []
        if stage is not None:
            where, params = " WHERE h.stage = ?", [_catalog.normalize_stage(stage)]
        df = self._query(
            "SELECT h.name, h.stage, h.stage_source, h.subcategory, h.family, h.aliases_json, h.function,"
            " (SELECT COUNT(*) FROM head_type_papers hp WHERE hp.head_type = h.name) AS n_papers"
            f" FROM head_types h{where} ORDER BY h.rowid",
            params,
        )
        df["aliases"] = [json.loads(v) for v in df.pop("aliases_json")]
        links: dict[str, list[str]] = {}
        untestable: dict[str, str] = {}
        for name, det, kind, note in self.conn.execute(
            "SELECT head_type, detector, kind, note FROM head_type_detectors ORDER BY rowid"
        ).fetchall():
            if kind == _catalog.NOT_TESTABLE:  # not a detector: why the type cannot be tested here
                untestable[name] = note or ""
            elif det not in links.setdefault(name, []):
                links[name].append(det)
        df["detectors"] = [links.get(name, []) for name in df["name"]]
        df["not_testable"] = [untestable.get(name) for name in df["name"]]
        return df

    def papers_for_head_type(self, name: str) -> pd.DataFrame:
        """Papers tagged with one head type (any alias); raises InputError for unknown names."""
        return self.catalog_papers(head_type=name)

    def head_type_for_detector(self, detector: str) -> list[str]:
        """Canonical head types that a detector or causal method finds, in catalog order."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT d.head_type FROM head_type_detectors d JOIN head_types h ON h.name = d.head_type"
                " WHERE d.detector = ? GROUP BY d.head_type ORDER BY MIN(h.rowid)",
                (detector,),
            ).fetchall()
        ]
