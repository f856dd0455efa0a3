"""Atlas schema: the row types callers write and the SQL that stores them.

Everything here is plain Python + stdlib; the atlas never imports torch. The row dataclasses are
frozen and keyword-only, and validate (and normalise numpy scalars to Python numbers) when built,
so a bad row fails loudly at the point where it is made.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

APP_ID = "headmine"
SCHEMA_VERSION = 1

RUN_KINDS = (
    "scan",
    "ablation",
    "patching",
    "attribution",
    "dla",
    "logit_lens",
    "chg",
    "chg_contrast",
    "factual",
    "causal_check",
)
"""Run kinds the pipeline writes today. Other strings are accepted (new methods add kinds)."""

COMPONENTS = ("head", "mlp", "embed", "layer")


def _require_str(owner: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise TypeError(f"{owner}.{name} must be a non-empty str, got {value!r}")


def _as_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _as_float(owner: str, name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}.{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One unit of work (a scan, an ablation sweep, ...) and everything needed to redo it.

    ``key`` is a caller-chosen idempotency key (e.g. a hash of model file hash + kind + task +
    params); :meth:`Atlas.find_run` looks runs up by it so interrupted sessions can resume.
    ``model_info`` is the provenance dict (source, file_hash, dtype, attn_implementation,
    model_type, geometry, ...). ``versions`` defaults to the installed library versions when the
    run is written. Times are ISO-8601 strings; ``finished_at`` defaults to the write time.
    """

    kind: str
    model: str
    key: str | None = None
    model_info: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    seeds: Any = None
    versions: Mapping[str, str] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    status: str = "complete"
    group_id: str | None = None
    notes: str | None = None

    def __post_init__(self) -> None:
        _require_str("RunRecord", "kind", self.kind)
        _require_str("RunRecord", "model", self.model)
        _require_str("RunRecord", "status", self.status)
        for name in ("key", "task", "started_at", "finished_at", "group_id", "notes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"RunRecord.{name} must be a str or None, got {value!r}")
        for name in ("model_info", "params", "versions"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"RunRecord.{name} must be a mapping, got {getattr(self, name)!r}")
        object.__setattr__(
            self, "duration_s", _as_float("RunRecord", "duration_s", self.duration_s, allow_none=True)
        )


@dataclass(frozen=True, kw_only=True)
class ScoreRow:
    """One number about one component: ``(component, layer, head, method, metric) -> value``.

    ``head`` is -1 for components that are not heads (``mlp``, ``embed``, ``layer``). ``value``
    may be NaN (stored as NULL, read back as NaN). ``n`` is the sample count behind the value and
    ``stderr`` its standard error when known.
    """

    layer: int
    head: int = -1
    method: str
    metric: str = "score"
    value: float
    component: str = "head"
    n: int | None = None
    stderr: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", _as_int("ScoreRow", "layer", self.layer))
        object.__setattr__(self, "head", _as_int("ScoreRow", "head", self.head))
        _require_str("ScoreRow", "method", self.method)
        _require_str("ScoreRow", "metric", self.metric)
        _require_str("ScoreRow", "component", self.component)
        object.__setattr__(self, "value", _as_float("ScoreRow", "value", self.value))
        if self.n is not None:
            object.__setattr__(self, "n", _as_int("ScoreRow", "n", self.n))
        object.__setattr__(self, "stderr", _as_float("ScoreRow", "stderr", self.stderr, allow_none=True))
        if self.component == "head" and self.head < 0:
            raise ValueError(f"ScoreRow for a head needs head >= 0, got {self.head}")


@dataclass(frozen=True, kw_only=True)
class LabelRow:
    """A head tagged with a canonical survey head type (see :mod:`headmine.catalog`).

    ``value`` is the score that earned the label, ``threshold`` the cut it passed, ``method`` the
    detector or causal method that produced the score.
    """

    layer: int
    head: int
    head_type: str
    method: str
    value: float
    threshold: float | None = None
    stage: str | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", _as_int("LabelRow", "layer", self.layer))
        object.__setattr__(self, "head", _as_int("LabelRow", "head", self.head))
        _require_str("LabelRow", "head_type", self.head_type)
        _require_str("LabelRow", "method", self.method)
        _require_str("LabelRow", "stage", self.stage, allow_none=True)
        _require_str("LabelRow", "note", self.note, allow_none=True)
        object.__setattr__(self, "value", _as_float("LabelRow", "value", self.value))
        object.__setattr__(
            self, "threshold", _as_float("LabelRow", "threshold", self.threshold, allow_none=True)
        )


@dataclass(frozen=True, kw_only=True)
class InputRow:
    """One prompt the run used, as exact token ids (a tuple of ints; any int sequence or 1-D
    integer array is accepted). ``role`` says what it was: ``clean``, ``corrupted``,
    ``reference``, ``text``, ... ``idx`` numbers prompts within a role."""

    idx: int
    token_ids: tuple[int, ...]
    role: str = "text"
    text: str | None = None
    meta: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "idx", _as_int("InputRow", "idx", self.idx))
        _require_str("InputRow", "role", self.role)
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"InputRow.text must be a str or None, got {self.text!r}")
        ids = self.token_ids
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"InputRow.token_ids array must be 1-D integer, got {ids.dtype} {ids.shape}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"InputRow.token_ids must be a sequence of ints, got {type(ids).__name__}")
        object.__setattr__(self, "token_ids", tuple(_as_int("InputRow", "token_ids[]", t) for t in ids))
        if self.meta is not None and not isinstance(self.meta, Mapping):
            raise TypeError(f"InputRow.meta must be a mapping or None, got {self.meta!r}")


DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    key           TEXT,
    kind          TEXT NOT NULL,
    model         TEXT NOT NULL,
    model_json    TEXT NOT NULL DEFAULT '{}',
    task          TEXT,
    params_json   TEXT NOT NULL DEFAULT '{}',
    seeds_json    TEXT NOT NULL DEFAULT 'null',
    versions_json TEXT NOT NULL DEFAULT '{}',
    started_at    TEXT,
    finished_at   TEXT,
    duration_s    REAL,
    status        TEXT NOT NULL DEFAULT 'complete',
    group_id      TEXT,
    notes         TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE INDEX IF NOT EXISTS runs_model_kind ON runs(model, kind);
CREATE INDEX IF NOT EXISTS runs_group ON runs(group_id);

CREATE TABLE IF NOT EXISTS scores (
    run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    component TEXT NOT NULL DEFAULT 'head',
    layer     INTEGER NOT NULL,
    head      INTEGER NOT NULL DEFAULT -1,
    method    TEXT NOT NULL,
    metric    TEXT NOT NULL DEFAULT 'score',
    value     REAL,
    n         INTEGER,
    stderr    REAL
);
CREATE INDEX IF NOT EXISTS scores_run ON scores(run_id);
CREATE INDEX IF NOT EXISTS scores_method ON scores(method, component, layer, head);

CREATE TABLE IF NOT EXISTS labels (
    run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    layer     INTEGER NOT NULL,
    head      INTEGER NOT NULL,
    head_type TEXT NOT NULL,
    stage     TEXT,
    method    TEXT NOT NULL,
    threshold REAL,
    value     REAL,
    note      TEXT
);
CREATE INDEX IF NOT EXISTS labels_run ON labels(run_id);
CREATE INDEX IF NOT EXISTS labels_type ON labels(head_type);

CREATE TABLE IF NOT EXISTS inputs (
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    role        TEXT NOT NULL,
    token_ids   BLOB NOT NULL,
    token_dtype TEXT NOT NULL DEFAULT '<i4',
    text        TEXT,
    meta_json   TEXT,
    PRIMARY KEY (run_id, role, idx)
);

CREATE TABLE IF NOT EXISTS artifacts (
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('json', 'npy')),
    payload BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE IF NOT EXISTS papers (
    id          INTEGER PRIMARY KEY,
    paper_key   TEXT NOT NULL UNIQUE,
    date        TEXT,
    title       TEXT NOT NULL,
    arxiv_id    TEXT,
    venue       TEXT,
    head_types  TEXT,
    models      TEXT,
    tasks       TEXT,
    key_result  TEXT,
    summary     TEXT,
    title_source TEXT
);

CREATE TABLE IF NOT EXISTS head_types (
    name         TEXT PRIMARY KEY,
    stage        TEXT NOT NULL,
    stage_source TEXT NOT NULL,
    subcategory  TEXT,
    family       TEXT,
    aliases_json TEXT NOT NULL DEFAULT '[]',
    function     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS head_types_stage ON head_types(stage);

CREATE TABLE IF NOT EXISTS head_type_papers (
    head_type TEXT NOT NULL REFERENCES head_types(name) ON DELETE CASCADE,
    paper_id  INTEGER NOT NULL REFERENCES papers(id) ON DELETE CASCADE,
    PRIMARY KEY (head_type, paper_id)
);
CREATE INDEX IF NOT EXISTS head_type_papers_paper ON head_type_papers(paper_id);

CREATE TABLE IF NOT EXISTS head_type_detectors (
    head_type TEXT NOT NULL REFERENCES head_types(name) ON DELETE CASCADE,
    detector  TEXT NOT NULL,
    task      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    note      TEXT,
    PRIMARY KEY (head_type, detector, task)
);
CREATE INDEX IF NOT EXISTS head_type_detectors_detector ON head_type_detectors(detector);
"""

TABLES = (
    "meta",
    "runs",
    "scores",
    "labels",
    "inputs",
    "artifacts",
    "papers",
    "head_types",
    "head_type_papers",
    "head_type_detectors",
)
