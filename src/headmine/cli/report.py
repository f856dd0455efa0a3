"""`headmine report`: the HTML atlas report (torch-free: it reads the atlas only)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from headmine.cli.console import console, friendly_errors
from headmine.core.errors import InputError
from headmine.report import build_report


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def report(
        atlas: Path = typer.Option(..., "--atlas", help="the atlas file (.db) to report on"),
        out: Path = typer.Option(Path("headmine-out/report"), "--out", help="output folder (new, empty, or an earlier report's)"),
        model: str | None = typer.Option(None, "--model", help="only this model (default: every model in the atlas)"),
        compare: tuple[int, int] | None = typer.Option(None, "--compare", help="two run ids to compare", metavar="RUN_A RUN_B"),
        compare_models: tuple[str, str] | None = typer.Option(
            None, "--compare-models", help="two models to compare", metavar="MODEL_A MODEL_B"
        ),
    ) -> None:
        """Write the self-contained HTML report: one page per model, plus an index (opens offline)."""
        if compare is not None and compare_models is not None:
            raise InputError("--compare and --compare-models cannot be combined", "pick one comparison per report")
        with console.status("writing the report"):
            files = build_report(atlas, out, model=model, compare=compare, compare_model_names=compare_models)
        table = Table(title=f"report in {escape(str(files.out_dir))}")
        table.add_column("page")
        table.add_column("file")
        table.add_row("index", escape(files.index.name))
        for name, path in files.pages.items():
            table.add_row(escape(name), escape(path.name))
        for path in files.compare:
            table.add_row("comparison", escape(path.name))
        console.print(table)
        for name, notes in files.notes.items():
            for note in notes:
                console.print(f"[yellow]note[/] {escape(name)}: {escape(note)}")
        console.print(f"open [bold]{escape(files.index.as_uri())}[/] in a browser")
