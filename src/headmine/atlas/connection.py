"""An open atlas connection: its lifecycle and the small query helpers the readers share.

:class:`~headmine.atlas.store.Atlas` adds opening and schema setup; the writer and the readers are
mixins over this class (``atlas.writing``, ``atlas.queries``, ``atlas.catalog_queries``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pandas as pd

from headmine.core.errors import AtlasError

_C = TypeVar("_C", bound="AtlasConnection")


class AtlasConnection:
    """A connection to one atlas file; usable as a context manager (closes on exit)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self: _C) -> _C:
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

    # ------------------------------------------------------------------ shared query helpers
    def _query(self, sql: str, params: list[Any]) -> pd.DataFrame:
        cur = self.conn.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return pd.DataFrame.from_records(cur.fetchall(), columns=cols)

    @staticmethod
    def _where(*conds: tuple[str, Any]) -> tuple[str, list[Any]]:
        parts, params = [], []
        for col, value in conds:
            if value is not None:
                parts.append(f"{col} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(parts) if parts else ""), params
