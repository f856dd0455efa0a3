"""Copy the packaged survey catalog (``headmine.catalog``) into an atlas's catalog tables."""

from __future__ import annotations

import json
import sqlite3

from headmine.catalog import load_papers
from headmine.catalog.survey import all_head_types


def fill_catalog(conn: sqlite3.Connection) -> None:
    """Replace the catalog tables' contents. The caller owns the transaction."""
    for table in ("head_type_detectors", "head_type_papers", "papers", "head_types"):
        conn.execute(f"DELETE FROM {table}")
    conn.executemany(
        "INSERT INTO head_types (name, stage, stage_source, subcategory, family, aliases_json, function)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                ht.name,
                ht.stage,
                ht.stage_source,
                ht.subcategory,
                ht.family,
                json.dumps(list(ht.aliases)),
                ht.function,
            )
            for ht in all_head_types()
        ],
    )
    add_links(conn)
    for pid, paper in enumerate(load_papers(), start=1):
        conn.execute(
            "INSERT INTO papers (id, paper_key, date, title, arxiv_id, venue, head_types, models, tasks,"
            " key_result, summary, title_source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                pid,
                paper.key,
                paper.date,
                paper.title,
                paper.arxiv_id,
                paper.venue,
                "; ".join(paper.head_types),
                paper.models,
                paper.tasks,
                paper.key_result,
                paper.summary,
                paper.title_source,
            ),
        )
        conn.executemany(
            "INSERT INTO head_type_papers (head_type, paper_id) VALUES (?, ?)",
            [(name, pid) for name in paper.head_types],
        )


def missing_links(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, str | None]]:
    """Links known to this process (packaged + registered by detectors) that the atlas lacks."""
    have = {tuple(r) for r in conn.execute("SELECT head_type, detector, task FROM head_type_detectors")}
    return [(ht.name, d.detector, d.task, d.kind, d.note) for ht in all_head_types() for d in ht.detectors
            if (ht.name, d.detector, d.task) not in have]


def add_links(conn: sqlite3.Connection) -> int:
    """Insert the missing links (a process that registered more detectors adds theirs; none is removed)."""
    rows = missing_links(conn)
    conn.executemany(
        "INSERT OR IGNORE INTO head_type_detectors (head_type, detector, task, kind, note) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)
