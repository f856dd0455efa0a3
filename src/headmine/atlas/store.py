"""The atlas: one SQLite file (WAL mode, foreign keys on) holding every run's results.

Writes are whole-run transactions: :meth:`Atlas.write_run` inserts the run row, its scores,
labels, inputs and artifacts inside one ``BEGIN IMMEDIATE ... COMMIT``; any exception rolls it all
back, so a crash or a bad row never leaves half a run. Several processes may write to one atlas
at once (SQLite serialises the writers; ``timeout`` is how long one waits for another).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from headmine import catalog as _catalog
from headmine.atlas import catalog_tables
from headmine.atlas.schema import (
    APP_ID,
    DDL,
    SCHEMA_VERSION,
    InputRow,
    LabelRow,
    RunRecord,
    ScoreRow,
)
from headmine.core.errors import AtlasError
from headmine.core.provenance import library_versions

_SQLITE_MAGIC = b"SQLite format 3\x00"
_INT32 = (-(2**31), 2**31 - 1)


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (what the atlas stores)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, sort_keys=True, ensure_ascii=False)


def _encode_ids(ids: tuple[int, ...]) -> tuple[bytes, str]:
    if all(_INT32[0] <= t <= _INT32[1] for t in ids):
        return np.asarray(ids, dtype="<i4").tobytes(), "<i4"
    return np.asarray(ids, dtype="<i8").tobytes(), "<i8"


def _decode_ids(blob: bytes, dtype: str) -> tuple[int, ...]:
    return tuple(np.frombuffer(blob, dtype=dtype).tolist())


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class Atlas:
    """A connection to one atlas file. Open with :meth:`Atlas.open`; usable as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        readonly: bool = False,
        timeout: float = 30.0,
    ) -> Atlas:
        """Open (or create) the atlas at ``path``.

        ``create``: make a new atlas if the file does not exist (ignored when ``readonly``).
        ``readonly``: open with SQLite's read-only mode; every write raises :class:`AtlasError`.
        ``timeout``: seconds to wait for another process's write lock.

        Raises :class:`AtlasError` when the path is missing (and ``create`` is off), is not a
        SQLite file, is a SQLite file that is not a headmine atlas, has a newer schema than this
        library, or cannot be written while ``readonly`` is off.
        """
        p = Path(path).expanduser().absolute()
        if p.is_dir():
            raise AtlasError(
                f"{p} is a folder, not an atlas file", f"give a file path, e.g. {p / 'atlas.db'}"
            )
        exists = p.exists()
        if not exists:
            if readonly or not create:
                raise AtlasError(
                    f"no atlas at {p}",
                    "check the path, or open it with create=True (readonly=False) to start a new atlas there",
                )
            if not p.parent.is_dir():
                raise AtlasError(
                    f"cannot create an atlas at {p}: folder {p.parent} does not exist",
                    "create the folder first or choose another path",
                )
            if not os.access(p.parent, os.W_OK | os.X_OK):
                raise AtlasError(
                    f"cannot create an atlas at {p}: folder {p.parent} is read-only",
                    "choose a writable location (e.g. under your home folder)",
                )
        else:
            cls._check_header(p)
            if not readonly:
                if not os.access(p, os.W_OK):
                    raise AtlasError(
                        f"the atlas {p} is read-only",
                        "open it with readonly=True to query it, or copy it to a writable location to add runs",
                    )
                if not os.access(p.parent, os.W_OK | os.X_OK):
                    raise AtlasError(
                        f"the atlas {p} sits in a read-only folder; SQLite needs to create its -wal/-shm files there",
                        "open it with readonly=True to query it, or copy it to a writable folder to add runs",
                    )
        hint = (
            "check the file's permissions and that no other process holds it locked "
            "(or open with a longer timeout=)"
        )
        try:
            return cls._open_connection(p, create=create, readonly=readonly, timeout=timeout, immutable=False)
        except sqlite3.OperationalError as err:
            if not readonly:
                raise AtlasError(f"could not open the atlas {p}: {err}", hint) from err
        # A WAL-mode file in a folder we cannot write: SQLite cannot make the -shm file that a
        # plain read-only open needs, so read it as an immutable snapshot instead.
        try:
            return cls._open_connection(p, create=create, readonly=True, timeout=timeout, immutable=True)
        except sqlite3.OperationalError as err:
            raise AtlasError(f"could not open the atlas {p} read-only: {err}", hint) from err

    @classmethod
    def _open_connection(
        cls, p: Path, *, create: bool, readonly: bool, timeout: float, immutable: bool
    ) -> Atlas:
        conn = cls._connect(p, readonly=readonly, timeout=timeout, immutable=immutable)
        atlas = cls(conn, p, readonly=readonly)
        try:
            atlas._setup(create=create)
        except sqlite3.OperationalError:
            conn.close()
            raise
        except sqlite3.DatabaseError as err:
            conn.close()
            raise AtlasError(
                f"{p} could not be read as a SQLite database ({err})",
                "check that it is a headmine atlas and not damaged; pass a new path to start a fresh atlas",
            ) from err
        except BaseException:
            conn.close()
            raise
        return atlas

    @staticmethod
    def _check_header(p: Path) -> None:
        with open(p, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head and head != _SQLITE_MAGIC:
            raise AtlasError(
                f"{p} is not a SQLite file, so it cannot be an atlas",
                "pass the path of an atlas (.db) created by headmine, or a new path to start one",
            )

    @staticmethod
    def _connect(p: Path, *, readonly: bool, timeout: float, immutable: bool = False) -> sqlite3.Connection:
        if readonly:
            uri = f"file:{quote(str(p))}?mode=ro" + ("&immutable=1" if immutable else "")
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
        else:
            conn = sqlite3.connect(str(p), timeout=timeout, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _setup(self, *, create: bool) -> None:
        conn = self._conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self.readonly or not create:
                raise AtlasError(
                    f"{self.path} is an empty SQLite file, not a headmine atlas",
                    "open it with create=True (and readonly=False) to turn it into an atlas, or pass another path",
                )
            conn.execute("PRAGMA journal_mode = WAL")
            self._create_schema()
            self.ensure_catalog()
            return
        if "meta" not in tables:
            self._foreign(sorted(tables))
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("app") != APP_ID:
            self._foreign(sorted(tables))
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise AtlasError(
                f"{self.path} has no valid schema_version in its meta table",
                "the file is damaged or was not written by headmine; start a new atlas at another path",
            ) from None
        if version > SCHEMA_VERSION:
            raise AtlasError(
                f"the atlas {self.path} has schema version {version}, newer than this headmine supports "
                f"({SCHEMA_VERSION})",
                "upgrade headmine (pip install -U headmine) to read it",
            )
        if version < 1:
            raise AtlasError(
                f"the atlas {self.path} has an invalid schema version {version}",
                "start a new atlas at another path",
            )
        if not self.readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if meta.get("catalog_fingerprint") != _catalog.catalog_fingerprint():
                self.ensure_catalog()

    def _foreign(self, tables: list[str]) -> None:
        shown = ", ".join(tables[:6]) + (", ..." if len(tables) > 6 else "")
        raise AtlasError(
            f"{self.path} is a SQLite database but not a headmine atlas (it has tables: {shown})",
            "pass the path of a headmine atlas, or a new path to create one; headmine will not write into "
            "another application's database",
        )

    def _create_schema(self) -> None:
        statements = [s.strip() for s in DDL.split(";") if s.strip()]
        with self._transaction():
            for stmt in statements:
                self._conn.execute(stmt)
            self._conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("app", APP_ID), ("schema_version", str(SCHEMA_VERSION)), ("created_at", utc_now())],
            )

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> Atlas:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "read-write"
        return f"Atlas({str(self.path)!r}, {mode})"

    @property
    def conn(self) -> sqlite3.Connection:
        """The underlying connection (for read-only ad-hoc SQL; writes should go through the API)."""
        if self._conn is None:
            raise AtlasError("this atlas has been closed", "open it again with Atlas.open(path)")
        return self._conn

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for this file (``'wal'`` for atlases headmine created)."""
        return str(self.conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    # ------------------------------------------------------------------ writing
    def _require_writable(self, what: str) -> None:
        if self.readonly:
            raise AtlasError(
                f"cannot {what}: the atlas {self.path} was opened read-only",
                "open it with Atlas.open(path) (readonly=False) in a writable location",
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise self._translate(err) from err
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise self._translate(exc) from exc
            raise

    def _translate(self, err: sqlite3.OperationalError) -> Exception:
        msg = str(err).lower()
        if "readonly" in msg or "read-only" in msg:
            return AtlasError(
                f"cannot write to the atlas {self.path}: {err}",
                "the file or its folder is read-only; copy the atlas to a writable location",
            )
        if "locked" in msg or "busy" in msg:
            return AtlasError(
                f"the atlas {self.path} stayed locked by another writer: {err}",
                "wait for the other headmine process to finish, or open with a longer timeout=",
            )
        return err

    def ensure_catalog(self) -> bool:
        """Fill the catalog tables from the packaged data if they are missing or out of date.

        Idempotent: returns False (and writes nothing) when the atlas already holds this
        library's catalog, or when the atlas is read-only.
        """
        fingerprint = _catalog.catalog_fingerprint()
        if self.readonly:
            return False
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'catalog_fingerprint'").fetchone()
        if row is not None and row[0] == fingerprint:
            if not catalog_tables.missing_links(self.conn):
                return False
            with self._transaction() as conn:  # detectors registered in this process add their links
                catalog_tables.add_links(conn)
            return True
        with self._transaction() as conn:
            catalog_tables.fill_catalog(conn)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('catalog_fingerprint', ?)", (fingerprint,)
            )
        return True

    def write_run(
        self,
        run: RunRecord,
        *,
        scores: Iterable[ScoreRow] = (),
        labels: Iterable[LabelRow] = (),
        inputs: Iterable[InputRow] = (),
        artifacts: Mapping[str, Any] = (),  # type: ignore[assignment]
    ) -> int:
        """Write one run and all its rows in a single transaction; return the new run id.

        Rows may come from generators (consumed inside the transaction). ``artifacts`` maps a
        name to a numpy array (stored as .npy) or to anything JSON-serialisable (stored as JSON).
        On any exception nothing is written and the exception propagates.
        """
        self._require_writable("write a run")
        if not isinstance(run, RunRecord):
            raise TypeError(f"run must be a RunRecord, got {type(run).__name__}")
        try:
            run_values = (
                run.key,
                run.kind,
                run.model,
                _dumps(dict(run.model_info)),
                run.task,
                _dumps(dict(run.params)),
                _dumps(run.seeds),
                _dumps(dict(run.versions) or library_versions()),
                run.started_at,
                run.finished_at or utc_now(),
                run.duration_s,
                run.status,
                run.group_id,
                run.notes,
            )
        except (TypeError, ValueError) as err:
            raise AtlasError(
                f"the run record for {run.kind!r} on {run.model!r} is not JSON-serialisable: {err}",
                "keep model_info, params, seeds and versions to dicts/lists of numbers, strings and bools",
            ) from err
        with self._transaction() as conn:
            cur = conn.execute(
                "INSERT INTO runs (key, kind, model, model_json, task, params_json, seeds_json, versions_json,"
                " started_at, finished_at, duration_s, status, group_id, notes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                run_values,
            )
            run_id = int(cur.lastrowid)  # type: ignore[arg-type]
            conn.executemany(
                "INSERT INTO scores (run_id, component, layer, head, method, metric, value, n, stderr)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._score_values(run_id, row) for row in scores),
            )
            conn.executemany(
                "INSERT INTO labels (run_id, layer, head, head_type, stage, method, threshold, value, note)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self._label_values(run_id, row) for row in labels),
            )
            conn.executemany(
                "INSERT INTO inputs (run_id, idx, role, token_ids, token_dtype, text, meta_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self._input_values(run_id, row) for row in inputs),
            )
            for name, value in dict(artifacts).items():
                conn.execute(
                    "INSERT INTO artifacts (run_id, name, kind, payload) VALUES (?, ?, ?, ?)",
                    (run_id, *self._artifact_payload(name, value)),
                )
        return run_id

    @staticmethod
    def _score_values(run_id: int, row: ScoreRow) -> tuple[Any, ...]:
        if not isinstance(row, ScoreRow):
            raise TypeError(f"scores must be ScoreRow objects, got {type(row).__name__}: {row!r}")
        value = None if math.isnan(row.value) else row.value
        stderr = None if row.stderr is None or math.isnan(row.stderr) else row.stderr
        return (run_id, row.component, row.layer, row.head, row.method, row.metric, value, row.n, stderr)

    @staticmethod
    def _label_values(run_id: int, row: LabelRow) -> tuple[Any, ...]:
        if not isinstance(row, LabelRow):
            raise TypeError(f"labels must be LabelRow objects, got {type(row).__name__}: {row!r}")
        head_type = _catalog.canonical_head_type(row.head_type) or row.head_type
        stage = row.stage
        if stage is None and head_type in _catalog.load_head_types():
            stage = _catalog.load_head_types()[head_type].stage
        return (run_id, row.layer, row.head, head_type, stage, row.method, row.threshold, row.value, row.note)

    @staticmethod
    def _input_values(run_id: int, row: InputRow) -> tuple[Any, ...]:
        if not isinstance(row, InputRow):
            raise TypeError(f"inputs must be InputRow objects, got {type(row).__name__}: {row!r}")
        blob, dtype = _encode_ids(row.token_ids)
        meta = None if row.meta is None else _dumps(dict(row.meta))
        return (run_id, row.idx, row.role, blob, dtype, row.text, meta)

    @staticmethod
    def _artifact_payload(name: str, value: Any) -> tuple[str, str, bytes | str]:
        if not isinstance(name, str) or not name:
            raise TypeError(f"artifact names must be non-empty strings, got {name!r}")
        if isinstance(value, np.ndarray):
            try:
                return name, "npy", _npy_bytes(value)
            except ValueError as err:
                raise AtlasError(
                    f"artifact {name!r} is an object array, which cannot be stored without pickle",
                    "convert it to a numeric array, or to lists/dicts stored as JSON",
                ) from err
        try:
            return name, "json", _dumps(value)
        except (TypeError, ValueError) as err:
            raise AtlasError(
                f"artifact {name!r} is neither a numpy array nor JSON-serialisable ({err})",
                "store numbers, strings, lists and dicts, or a numpy array",
            ) from err

    # ------------------------------------------------------------------ reading runs
    def find_run(self, *, key: str) -> int | None:
        """The newest complete run written with this idempotency key, or None (for resume)."""
        row = self.conn.execute(
            "SELECT id FROM runs WHERE key = ? AND status = 'complete' ORDER BY id DESC LIMIT 1", (key,)
        ).fetchone()
        return None if row is None else int(row[0])

    def run(self, run_id: int) -> RunRecord:
        """The :class:`RunRecord` of one run (as stored)."""
        row = self.conn.execute(
            "SELECT key, kind, model, model_json, task, params_json, seeds_json, versions_json, started_at,"
            " finished_at, duration_s, status, group_id, notes FROM runs WHERE id = ?",
            (int(run_id),),
        ).fetchone()
        if row is None:
            raise self._no_run(run_id)
        return RunRecord(
            key=row[0],
            kind=row[1],
            model=row[2],
            model_info=json.loads(row[3]),
            task=row[4],
            params=json.loads(row[5]),
            seeds=json.loads(row[6]),
            versions=json.loads(row[7]),
            started_at=row[8],
            finished_at=row[9],
            duration_s=row[10],
            status=row[11],
            group_id=row[12],
            notes=row[13],
        )

    def _no_run(self, run_id: Any) -> AtlasError:
        return AtlasError(
            f"the atlas {self.path} has no run {run_id!r}",
            "list the runs with Atlas.runs() or `headmine runs`",
        )

    def _query(self, sql: str, params: list[Any]) -> pd.DataFrame:
        cur = self.conn.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame.from_records(cur.fetchall(), columns=cols)

    def runs(
        self, *, model: str | None = None, kind: str | None = None, group_id: str | None = None
    ) -> pd.DataFrame:
        """Runs as a DataFrame, oldest first. JSON columns come back parsed as
        ``model_info``, ``params``, ``seeds`` and ``versions``."""
        where, params = self._where(("model", model), ("kind", kind), ("group_id", group_id))
        df = self._query(
            "SELECT id, key, kind, model, task, group_id, status, started_at, finished_at, duration_s, notes,"
            f" model_json, params_json, seeds_json, versions_json FROM runs{where} ORDER BY id",
            params,
        )
        for src, dst in (
            ("model_json", "model_info"),
            ("params_json", "params"),
            ("seeds_json", "seeds"),
            ("versions_json", "versions"),
        ):
            df[dst] = [json.loads(v) for v in df[src]]
            del df[src]
        return df

    @staticmethod
    def _where(*conds: tuple[str, Any]) -> tuple[str, list[Any]]:
        parts, params = [], []
        for col, value in conds:
            if value is not None:
                parts.append(f"{col} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(parts) if parts else ""), params

    def scores(
        self,
        *,
        run_id: int | None = None,
        model: str | None = None,
        method: str | None = None,
        component: str | None = None,
        kind: str | None = None,
        metric: str | None = None,
    ) -> pd.DataFrame:
        """Score rows joined with their run's model, kind and task. Stored NaN reads back as NaN."""
        where, params = self._where(
            ("s.run_id", run_id),
            ("r.model", model),
            ("s.method", method),
            ("s.component", component),
            ("r.kind", kind),
            ("s.metric", metric),
        )
        df = self._query(
            "SELECT s.run_id, r.model, r.kind, r.task, s.component, s.layer, s.head, s.method, s.metric,"
            " s.value, s.n, s.stderr FROM scores s JOIN runs r ON r.id = s.run_id"
            f"{where} ORDER BY s.run_id, s.rowid",
            params,
        )
        df["value"] = df["value"].astype("float64")
        df["stderr"] = df["stderr"].astype("float64")
        df["n"] = df["n"].astype("Int64")
        return df

    def labels(
        self, *, run_id: int | None = None, model: str | None = None, head_type: str | None = None
    ) -> pd.DataFrame:
        """Head labels joined with their run's model, kind and task. ``head_type`` accepts aliases."""
        if head_type is not None:
            head_type = _catalog.canonical_head_type(head_type) or head_type
        where, params = self._where(("l.run_id", run_id), ("r.model", model), ("l.head_type", head_type))
        df = self._query(
            "SELECT l.run_id, r.model, r.kind, r.task, l.layer, l.head, l.head_type, l.stage, l.method,"
            " l.threshold, l.value, l.note FROM labels l JOIN runs r ON r.id = l.run_id"
            f"{where} ORDER BY l.run_id, l.rowid",
            params,
        )
        df["value"] = df["value"].astype("float64")
        df["threshold"] = df["threshold"].astype("float64")
        return df

    def heads(
        self, *, model: str | None = None, head_type: str | None = None, min_score: float | None = None
    ) -> pd.DataFrame:
        """Labelled heads with the score that earned the label, best first within each head type.

        Columns: model, head_id (``L{layer}H{head}``), layer, head, head_type, stage, method, score,
        threshold, run_id, kind, task, group_id.
        """
        if head_type is not None:
            head_type = _catalog.canonical_head_type(head_type) or head_type
        where, params = self._where(("r.model", model), ("l.head_type", head_type))
        if min_score is not None:
            where += (" AND " if where else " WHERE ") + "l.value >= ?"
            params.append(float(min_score))
        df = self._query(
            "SELECT r.model, ('L' || l.layer || 'H' || l.head) AS head_id, l.layer, l.head, l.head_type,"
            " l.stage, l.method, l.value AS score, l.threshold, l.run_id, r.kind, r.task, r.group_id"
            f" FROM labels l JOIN runs r ON r.id = l.run_id{where}"
            " ORDER BY r.model, l.head_type, l.value DESC, l.layer, l.head",
            params,
        )
        df["score"] = df["score"].astype("float64")
        return df

    def inputs(self, run_id: int) -> list[InputRow]:
        """The prompts of one run, in the order they were written, with exact token ids."""
        rows = self.conn.execute(
            "SELECT idx, role, token_ids, token_dtype, text, meta_json FROM inputs WHERE run_id = ? ORDER BY rowid",
            (int(run_id),),
        ).fetchall()
        return [
            InputRow(
                idx=idx,
                role=role,
                token_ids=_decode_ids(blob, dtype),
                text=text,
                meta=None if meta is None else json.loads(meta),
            )
            for idx, role, blob, dtype, text, meta in rows
        ]

    def artifact(self, run_id: int, name: str) -> Any:
        """One artifact: dict/list/scalar for JSON, ``np.ndarray`` for npy (loaded without pickle)."""
        row = self.conn.execute(
            "SELECT kind, payload FROM artifacts WHERE run_id = ? AND name = ?", (int(run_id), name)
        ).fetchone()
        if row is None:
            names = self.artifact_names(run_id)
            raise AtlasError(
                f"run {run_id} has no artifact {name!r}",
                f"available: {', '.join(names)}" if names else "this run stored no artifacts",
            )
        kind, payload = row
        if kind == "npy":
            return np.load(io.BytesIO(payload), allow_pickle=False)
        return json.loads(payload)

    def artifact_names(self, run_id: int) -> list[str]:
        """Names of one run's artifacts, sorted."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM artifacts WHERE run_id = ? ORDER BY name", (int(run_id),)
            ).fetchall()
        ]

    def models(self) -> list[str]:
        """Every model name that has at least one run, sorted."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT model FROM runs ORDER BY model").fetchall()]

    # ------------------------------------------------------------------ catalog
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
        for name, det in self.conn.execute(
            "SELECT head_type, detector FROM head_type_detectors ORDER BY rowid"
        ).fetchall():
            if det not in links.setdefault(name, []):
                links[name].append(det)
        df["detectors"] = [links.get(name, []) for name in df["name"]]
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
