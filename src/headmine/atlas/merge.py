"""Merging atlas shards into one atlas: idempotent, one transaction per shard, nothing lost.

```python
from headmine.atlas.merge import merge_shards
report = merge_shards(["shards/a.db", "shards/b.db"], "atlas.db")
report.added, report.already   # runs copied, runs the atlas held already
```

A batch of jobs (``headmine batch``) writes each job's runs to its own shard, so jobs never wait on
one writer; the shards are folded in here. Each run is copied whole: the run row, its scores, labels,
inputs (exact token ids) and artifacts, in their stored order, under a new run id.

**Identity.** Two runs are the same run when their run rows are equal in every column but the id:
key, kind, model, provenance, task, params, seeds, versions, start and finish times, duration, status,
group and notes. A shard merged twice therefore adds nothing the second time, and neither does a run
that reached the atlas another way; two executions of one job differ (at least in their times and
durations) and both are kept. Identities are computed from the run rows when a merge starts (one
read of the ``runs`` table; no schema change).

**Safety.** Every shard is checked before anything is written: it must exist, be a SQLite file, be a
headmine atlas, hold no newer schema than this library and have every column the target stores; a
shard that fails is refused with the reason and nothing is merged. Each shard then goes in ONE
transaction, so a failure midway rolls that shard back and leaves the atlas as it was. An atlas is
never merged into itself. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headmine.atlas.store import Atlas
from headmine.core.errors import AtlasError

#: run columns that make a run's identity (every column but the id), in the order they are copied
RUN_COLUMNS = ("key", "kind", "model", "model_json", "task", "params_json", "seeds_json", "versions_json",
               "started_at", "finished_at", "duration_s", "status", "group_id", "notes")
#: per-run tables and the columns copied (``run_id`` is replaced by the new run's id)
ROW_TABLES: dict[str, tuple[str, ...]] = {
    "scores": ("component", "layer", "head", "method", "metric", "value", "n", "stderr"),
    "labels": ("layer", "head", "head_type", "stage", "method", "threshold", "value", "note"),
    "inputs": ("idx", "role", "token_ids", "token_dtype", "text", "meta_json"),
    "artifacts": ("name", "kind", "payload"),
}


@dataclass(frozen=True)
class ShardMerge:
    """What one shard brought: ``added`` runs copied, ``already`` runs the atlas held before."""

    shard: Path
    runs: int
    added: int
    already: int
    seconds: float
    run_ids: tuple[int, ...] = ()  # the new run ids in the atlas


@dataclass
class MergeReport:
    """The merge of several shards into ``into``."""

    into: Path
    shards: list[ShardMerge] = field(default_factory=list)

    @property
    def added(self) -> int:
        return sum(s.added for s in self.shards)

    @property
    def already(self) -> int:
        return sum(s.already for s in self.shards)


def run_identity(row: Sequence[Any]) -> str:
    """The identity of a run row (the :data:`RUN_COLUMNS` values, in order) as a hex digest."""
    return hashlib.sha256(json.dumps(list(row), ensure_ascii=False).encode()).hexdigest()


def _identities(db: Atlas) -> set[str]:
    cols = ", ".join(RUN_COLUMNS)
    return {run_identity(row) for row in db.conn.execute(f"SELECT {cols} FROM runs")}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def check_shard(shard: str | os.PathLike[str], into: str | os.PathLike[str] | None = None) -> Path:
    """The shard's path when it can be merged (into ``into``); an :class:`AtlasError` saying why not otherwise."""
    p = Path(shard).expanduser()
    if not p.is_file():
        raise AtlasError(f"no shard at {p}", "give the path of an atlas file written by headmine")
    if into is not None and Path(into).expanduser().exists() and p.resolve() == Path(into).expanduser().resolve():
        raise AtlasError(f"cannot merge the atlas {p} into itself", "give a different --into atlas")
    try:
        with Atlas.open(p, readonly=True, create=False) as db:
            missing = [f"{table}.{col}" for table, cols in (("runs", RUN_COLUMNS), *ROW_TABLES.items())
                       for col in cols if col not in _columns(db.conn, table)]
    except AtlasError as err:
        raise AtlasError(f"refusing the shard {p}: {err.problem}; nothing was merged", err.hint) from None
    except sqlite3.DatabaseError as err:
        raise AtlasError(f"refusing the shard {p}: it cannot be read as an atlas ({err}); nothing was merged",
                         "check that it is an atlas written by headmine and not damaged") from None
    if missing:
        raise AtlasError(f"refusing the shard {p}: it lacks the columns {', '.join(missing)}; nothing was merged",
                         "it was written by an incompatible headmine; open it with that version and export its runs")
    return p


def shard_bytes(path: str | os.PathLike[str]) -> bytes:
    """The atlas file at ``path`` as bytes, with its write-ahead log folded in: a shard ready to ship to
    another machine (a Ray worker returns its shard this way)."""
    with Atlas.open(path, create=False) as db:
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(path).read_bytes()


def _copy_run(src: sqlite3.Connection, dst: sqlite3.Connection, old_id: int, row: Sequence[Any]) -> int:
    cols = ", ".join(RUN_COLUMNS)
    marks = ", ".join("?" * len(RUN_COLUMNS))
    new_id = int(dst.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", tuple(row)).lastrowid)  # type: ignore[arg-type]
    for table, columns in ROW_TABLES.items():
        names = ", ".join(columns)
        rows = src.execute(f"SELECT {names} FROM {table} WHERE run_id = ? ORDER BY rowid", (old_id,))
        dst.executemany(f"INSERT INTO {table} (run_id, {names}) VALUES (?, {', '.join('?' * len(columns))})",
                        ((new_id, *r) for r in rows))
    return new_id


def _merge_one(db: Atlas, shard: Path, seen: set[str]) -> ShardMerge:
    start = time.perf_counter()
    added: list[int] = []
    already = 0
    with Atlas.open(shard, readonly=True, create=False) as src:
        runs = src.conn.execute(f"SELECT id, {', '.join(RUN_COLUMNS)} FROM runs ORDER BY id").fetchall()
        fresh: list[str] = []
        with db._transaction() as dst:
            for old_id, *row in runs:
                ident = run_identity(row)
                if ident in seen or ident in fresh:
                    already += 1
                    continue
                added.append(_copy_run(src.conn, dst, int(old_id), row))
                fresh.append(ident)
        seen.update(fresh)  # only once the shard's transaction has committed
    return ShardMerge(shard=shard, runs=len(runs), added=len(added), already=already,
                      seconds=time.perf_counter() - start, run_ids=tuple(added))


def merge_shards(
    shards: Sequence[str | os.PathLike[str]],
    into: str | os.PathLike[str],
    *,
    on_shard: Callable[[ShardMerge], None] | None = None,
) -> MergeReport:
    """Merge every shard into the atlas ``into`` (created if missing); see the module docstring.

    All shards are checked first (:func:`check_shard`): one that cannot be merged raises an
    :class:`AtlasError` before anything is written. ``on_shard`` is called after each shard commits.
    """
    if not shards:
        raise AtlasError("no shards to merge", "give one or more shard atlas files")
    paths = [check_shard(s, into) for s in shards]
    report = MergeReport(into=Path(into))
    with Atlas.open(into) as db:
        db._require_writable("merge shards")
        seen = _identities(db)
        for p in paths:
            try:
                merged = _merge_one(db, p, seen)
            except sqlite3.DatabaseError as err:
                raise AtlasError(f"merging the shard {p} into {into} failed: {err}; that shard was rolled back",
                                 "check the shard file (and the disk space); shards merged before it are kept") from None
            report.shards.append(merged)
            if on_shard is not None:
                on_shard(merged)
    return report
