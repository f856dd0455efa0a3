""":class:`ApplyResult`: what every application run returns, written as one atlas run.

The atlas run has the application's name as its ``kind``, its configuration as ``params``, the
per-head scores it ranked heads by as head scores (so they get heatmaps and agreement tables like any
method), and one ``apply_summary`` artifact: the chosen heads and parameters, the before/after tables
(rows from :func:`headmine.apply.evaluation.effect_row`), the selection log and the notes. The
report's applications section reads exactly that artifact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from headmine.atlas import AtlasRun, JobResult, RunRecord
from headmine.atlas.artifacts import APPLY_SUMMARY
from headmine.core.ids import HeadId


def jsonable(x: Any) -> Any:
    """Plain JSON data: HeadIds as ``L3H5``, arrays as lists, non-finite floats as None."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, HeadId):
        return str(x)
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class ApplyResult(JobResult):
    """One application run.

    Attributes:
        kind: the application's name (``steer``, ``fv``, ...): the atlas run's kind.
        title: what the report calls it; ``paper``: the method's source.
        model, model_info: the model (``LoadedModel.name`` and ``model_info()``).
        config: every parameter of the run (stored as the run's ``params``).
        heads: the chosen heads, in order.
        chosen: the chosen parameters (K, alpha, layer, ...), chosen on the fit split.
        tables: name -> before/after rows (``effect_row`` dicts), measured on held-out data.
        selection: how the choice was made (candidates and their fit-split scores).
        head_scores: tidy score table (``headmine.core.tables`` columns) of the per-head scores, or None.
        notes: plain sentences the report and CLI print (e.g. "not significant: ...").
        data: sizes and construction of the data sets used (fit / held-out counts).
        duration_s: wall time of the run.
    """

    kind: str
    title: str
    paper: str
    model: str
    model_info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    heads: list[HeadId] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    selection: list[dict[str, Any]] = field(default_factory=list)
    head_scores: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The ``apply_summary`` artifact."""
        return jsonable({"kind": self.kind, "title": self.title, "paper": self.paper,
                         "heads": [str(h) for h in self.heads], "chosen": self.chosen, "tables": self.tables,
                         "selection": self.selection, "notes": self.notes, "data": self.data})

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        record = RunRecord(kind=self.kind, model=self.model, model_info=self.model_info, task=self.kind,
                           params=jsonable(self.config), seeds=int(self.config.get("seed", 0)),
                           duration_s=self.duration_s, group_id=group_id)
        scores = self.head_scores if self.head_scores is not None else ()
        return AtlasRun(record=record, scores=scores, artifacts={APPLY_SUMMARY: self.summary()})
