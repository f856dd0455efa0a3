"""`headmine catalog`: the survey's head types (stage, function, detectors) and the papers behind them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from headmine.apply import APPLICATIONS
from headmine.atlas import Atlas
from headmine.catalog import NOT_TESTABLE, STAGES, all_head_types, head_type_info
from headmine.cli.console import console, friendly_errors
from headmine.detectors import DETECTORS


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def catalog(
        head_type: str | None = typer.Option(None, "--head-type", help="one head type (any alias): its details and papers"),
        stage: str | None = typer.Option(None, "--stage", help="a survey stage (full name or KR, ICI, LR, EP)"),
        search: str | None = typer.Option(None, "--search", help="words that must all appear in a paper's entry"),
        atlas: Path | None = typer.Option(None, "--atlas", help="read the catalog stored in this atlas instead"),
        coverage: bool = typer.Option(False, "--coverage", help="how many head types headmine can find, by stage"),
    ) -> None:
        """List the survey's head types (stage, function, detectors) and the papers behind them."""
        DETECTORS.names()  # registers the built-in and plugin detectors: their files declare their head types
        APPLICATIONS.names()  # the applications too (each declares the head types it finds and uses)
        if coverage:
            _print_coverage()
            return
        if atlas is not None:
            with Atlas.open(atlas, readonly=True) as db:
                _print_catalog(db, head_type, stage, search)
            return
        with tempfile.TemporaryDirectory(prefix="headmine-catalog-") as tmp:
            with Atlas.open(Path(tmp) / "catalog.db") as db:
                _print_catalog(db, head_type, stage, search)


def coverage_table() -> list[dict[str, Any]]:
    """Per stage: head types; those with a detector of their own (each carries its causal check against
    random heads); those found by a defining causal test (a test that defines the type in its paper,
    e.g. the IOI roles' path patching, registered as a link of kind ``defining_test``); those found by an
    application (tested against random heads of the same number); those covered by any of these; those
    linked only to a generic causal method (ablation, patching: a way to test candidates, not a test that
    defines the type); those marked not testable here (a note says what testing them needs); and the names
    of the types not covered."""
    detectors = set(DETECTORS.names())
    rows = []
    for stage in STAGES:
        types = [t for t in all_head_types() if t.stage == stage]
        own = {t.name for t in types if any(d.detector in detectors for d in t.detectors)}
        defining = {t.name for t in types if any(d.kind == "defining_test" for d in t.detectors)}
        application = {t.name for t in types if any(d.kind == "application" for d in t.detectors)}
        covered = own | defining | application
        untestable = {t.name for t in types if t.name not in covered
                      and any(d.kind == NOT_TESTABLE for d in t.detectors)}
        generic = {t.name for t in types if any(d.kind != NOT_TESTABLE for d in t.detectors)
                   and t.name not in covered | untestable}
        rows.append({"stage": stage, "types": len(types), "detector": len(own), "defining_test": len(defining),
                     "application": len(application),
                     "covered": len(covered), "generic_only": len(generic), "not_testable": len(untestable),
                     "missing": sorted(t.name for t in types if t.name not in covered)})
    return rows


def _print_coverage() -> None:
    rows = coverage_table()
    table = Table(title="head types headmine can find, by survey stage")
    for col in ("stage", "types", "own detector", "defining test", "application", "covered", "generic method only",
                "not testable here", "not covered"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(escape(r["stage"]), str(r["types"]), str(r["detector"]), str(r["defining_test"]),
                      str(r["application"]),
                      f"{r['covered']} ({r['covered'] / max(r['types'], 1):.0%})", str(r["generic_only"]),
                      str(r["not_testable"]), escape(", ".join(r["missing"])))
    total, covered = sum(r["types"] for r in rows), sum(r["covered"] for r in rows)
    table.add_row("all", str(total), str(sum(r["detector"] for r in rows)), str(sum(r["defining_test"] for r in rows)),
                  str(sum(r["application"] for r in rows)),
                  f"{covered} ({covered / max(total, 1):.0%})", str(sum(r["generic_only"] for r in rows)),
                  str(sum(r["not_testable"] for r in rows)), "")
    console.print(table)
    console.print("why a type is not testable here: `headmine catalog --head-type NAME`")


def _print_catalog(db, head_type: str | None, stage: str | None, search: str | None) -> None:
    show_types = head_type is None and not search
    if head_type is not None:
        info = head_type_info(head_type)  # InputError with suggestions for unknown names
        detail = Table(title=escape(info.name), show_header=False)
        detail.add_row("stage", f"{escape(info.stage)} ({escape(info.stage_source)})")
        detail.add_row("family", escape(info.family))
        detail.add_row("aliases", escape(", ".join(info.aliases)) or "-")
        detail.add_row("function", escape(info.function))
        detail.add_row(
            "detectors",
            "\n".join(escape(f"{d.detector} ({d.kind}) on {d.task}" + (f": {d.note}" if d.note else ""))
                      for d in info.detectors if d.kind != NOT_TESTABLE)
            or "[dim]no detector yet[/]",
        )
        for d in info.detectors:
            if d.kind == NOT_TESTABLE:
                detail.add_row("not testable here", escape(d.note or ""))
        console.print(detail)
    if show_types:
        types = db.catalog_head_types(stage=stage)
        table = Table(title=f"head types{' in ' + escape(stage) if stage else ''} ({len(types)})")
        for col in ("head type", "stage", "function", "detectors", "papers"):
            table.add_column(col, overflow="fold")
        for r in types.itertuples(index=False):
            dets = ", ".join(r.detectors) if r.detectors else (
                "[dim]not testable here[/]" if r.not_testable is not None else "[dim]no detector yet[/]")
            table.add_row(escape(r.name), escape(r.stage), escape(r.function), dets if not r.detectors else escape(dets),
                          str(int(r.n_papers)))
        console.print(table)
    papers = db.catalog_papers(head_type=head_type, stage=stage, search=search)
    if show_types and stage is None:
        console.print(f"{len(papers)} papers in the catalog: list them with --search WORDS, --head-type T or --stage S")
        return
    title = "papers" + (f" on {escape(head_type)}" if head_type else "") + (f" in {escape(stage)}" if stage else "")
    title += f" matching {escape(repr(search))}" if search else ""
    table = Table(title=f"{title} ({len(papers)})")
    for col in ("date", "title", "where", "head types", "summary"):
        table.add_column(col, overflow="fold")
    for p in papers.itertuples(index=False):
        where = f"arXiv:{p.arxiv_id}" if p.arxiv_id else p.venue
        table.add_row(escape(p.date or ""), escape(p.title), escape(where or ""), escape(p.head_types or ""),
                      escape(p.summary or p.key_result or ""))
    console.print(table)
    if not len(papers):
        console.print("[yellow]no paper matches[/]: try fewer or other words")
