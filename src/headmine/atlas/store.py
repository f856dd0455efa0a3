"""The atlas: one SQLite file (WAL mode, foreign keys on) holding every run's results.

:class:`Atlas` opens (or creates) the file, checks that it is a headmine atlas of a schema this
library reads, and sets the schema up. Its methods come from three mixins: writing runs
(``atlas.writing``), reading them (``atlas.queries``) and the catalog tables
(``atlas.catalog_queries``).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from headmine import catalog as _catalog
from headmine.atlas.catalog_queries import CatalogQueries
from headmine.atlas.encoding import utc_now
from headmine.atlas.queries import AtlasQueries
from headmine.atlas.schema import APP_ID, DDL, SCHEMA_VERSION
from headmine.atlas.writing import AtlasWriter
from headmine.core.errors import AtlasError

__all__ = ["Atlas", "utc_now"]

_SQLITE_MAGIC = b"SQLite format 3\x00"


class Atlas(AtlasWriter, AtlasQueries, CatalogQueries):
    """A connection to one atlas file. Open with :meth:`Atlas.open`; usable as a context manager."""

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _check_creatable(p: Path) -> None:
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

    @classmethod
    def check_target(cls, path: str | os.PathLike[str]) -> None:
        """Fail now, with the error :meth:`open` would give later, if a job could not write its run to
        ``path``; create nothing (a command refused later, e.g. for a bad option, leaves no empty atlas)."""
        p = Path(path).expanduser().absolute()
        if p.exists():
            cls.open(p).close()
        else:
            cls._check_creatable(p)

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
                    "check the path; a command that writes (`headmine mine`, `headmine scan --atlas PATH`) creates a "
                    "new atlas, as does Atlas.open(path) in Python",
                )
            cls._check_creatable(p)
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
