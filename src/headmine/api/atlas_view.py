"""``hm.Atlas(path)``: an atlas file read from a notebook, as DataFrames, with its report inline.

A thin view over :class:`headmine.atlas.Atlas` that opens the file read-only for each call (so a
notebook never holds a lock while a `mine` job writes) and answers with DataFrames.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from headmine.atlas import Atlas as AtlasStore
from headmine.catalog import resolve_head_type
from headmine.core.errors import AtlasError
from headmine.report.build import build_report


@dataclass
class ReportView:
    """A written report; in a notebook it shows inline (an iframe holding the model page, no server)."""

    path: Path
    height: int = 800

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        return (f"<iframe title='headmine report' style='width:100%;height:{self.height}px;border:1px solid #ccc' "
                f"sandbox='allow-scripts' srcdoc=\"{html.escape(page, quote=True)}\"></iframe>")


class Atlas:
    """An atlas file: ``runs()``, ``heads(type=...)``, ``scores(run=...)``, ``labels()`` and ``report()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.notes: list[str] = []  # set by hm.mine: stages that did not apply to the model
        if not self.path.is_file():
            raise AtlasError(f"no atlas file at {self.path}", "run hm.mine(...) or hm.scan(..., atlas=PATH) first")

    def _open(self) -> AtlasStore:
        return AtlasStore.open(self.path, readonly=True)

    def models(self) -> list[str]:
        with self._open() as db:
            return db.models()

    def runs(self, *, model: str | None = None, kind: str | None = None) -> pd.DataFrame:
        """One row per run, oldest first: id, kind, model, task, status, duration, params, ..."""
        with self._open() as db:
            return db.runs(model=model, kind=kind)

    def heads(self, type: str | None = None, *, model: str | None = None, min_score: float | None = None) -> pd.DataFrame:
        """Labelled heads, best first within each head type; ``type`` accepts any alias (``"induction"``)."""
        with self._open() as db:
            return db.heads(model=model, head_type=resolve_head_type(type) if type else None, min_score=min_score)

    def labels(self, *, run: int | None = None, model: str | None = None) -> pd.DataFrame:
        """Every head label with its note (the causal check's verdict for scan labels)."""
        with self._open() as db:
            return db.labels(run_id=run, model=model)

    def scores(self, run: int | None = None, *, model: str | None = None, method: str | None = None,
               metric: str | None = None) -> pd.DataFrame:
        """Score rows (run_id, model, kind, task, component, layer, head, method, metric, value, n, stderr)."""
        with self._open() as db:
            return db.scores(run_id=run, model=model, method=method, metric=metric)

    def report(self, out_dir: str | Path | None = None, *, model: str | None = None, height: int = 800) -> ReportView:
        """Write the HTML report (into ``out_dir``, default a temporary folder) and show one model's page inline."""
        out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="headmine-report-"))
        files = build_report(self.path, out, model=model)
        if not files.pages:
            raise AtlasError(f"the atlas {self.path} holds no model to report", "write a run first")
        page = files.pages[model] if model is not None else next(iter(files.pages.values()))
        return ReportView(page, height)

    def __repr__(self) -> str:
        return f"<headmine Atlas {self.path}>"
