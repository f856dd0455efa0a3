"""Writing runs: one run and all its rows per transaction, and the catalog tables.

Writes are whole-run transactions: :meth:`AtlasWriter.write_run` inserts the run row, its scores,
labels, inputs and artifacts inside one ``BEGIN IMMEDIATE ... COMMIT``; any exception rolls it all
back, so a crash or a bad row never leaves half a run. Several processes may write to one atlas
at once (SQLite serialises the writers; ``timeout`` is how long one waits for another).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from headmine import catalog as _catalog
from headmine.atlas import catalog_tables
from headmine.atlas.connection import AtlasConnection
from headmine.atlas.encoding import artifact_payload, dumps, encode_ids, utc_now
from headmine.atlas.schema import InputRow, LabelRow, RunRecord, ScoreRow
from headmine.core.errors import AtlasError
from headmine.core.provenance import library_versions


class AtlasWriter(AtlasConnection):
    """The write side of an atlas: runs (one transaction each) and the catalog tables."""

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
        if "full" in msg:  # SQLITE_FULL: the disk (or the database's size limit) is full
            return AtlasError(
                f"cannot write to the atlas {self.path}: the disk is full ({err}); nothing of this run was written "
                "(rolled back) and the runs already stored are intact",
                "free disk space (or move the atlas to a larger disk) and run the command again",
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
                dumps(dict(run.model_info)),
                run.task,
                dumps(dict(run.params)),
                dumps(run.seeds),
                dumps(dict(run.versions) or library_versions()),
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
                    (run_id, *artifact_payload(name, value)),
                )
        return run_id

    def tag_group(self, group_id: str, key: str) -> int:
        """Give every run of the session ``group_id`` the idempotency ``key`` (one transaction); return
        how many runs were tagged. A batch job that writes several runs (``mine``) is keyed this way
        once all of them are written, so a job that failed halfway is never taken as done."""
        self._require_writable("tag runs")
        with self._transaction() as conn:
            return int(conn.execute("UPDATE runs SET key = ? WHERE group_id = ?", (key, group_id)).rowcount)

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
        blob, dtype = encode_ids(row.token_ids)
        meta = None if row.meta is None else dumps(dict(row.meta))
        return (run_id, row.idx, row.role, blob, dtype, row.text, meta)
