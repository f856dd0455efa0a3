"""Reading runs back: runs, scores, labels, labelled heads, exact inputs and artifacts."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from headmine import catalog as _catalog
from headmine.atlas.connection import AtlasConnection
from headmine.atlas.encoding import decode_ids, load_artifact
from headmine.atlas.schema import InputRow, RunRecord
from headmine.core.errors import AtlasError


class AtlasQueries(AtlasConnection):
    """The read side of an atlas's runs (everything comes back as DataFrames or row objects)."""

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
                token_ids=decode_ids(blob, dtype),
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
        return load_artifact(kind, payload)

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
