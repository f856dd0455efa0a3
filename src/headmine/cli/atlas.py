"""`headmine atlas merge SHARD... --into ATLAS`: fold atlas shards (e.g. a batch's) into one atlas.

Torch-free: it reads and writes atlas files only (``headmine.atlas.merge``).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from headmine.atlas.merge import ShardMerge, merge_shards
from headmine.cli.console import console, friendly_errors


def register(app: typer.Typer) -> None:
    atlas_app = typer.Typer(help="Work on atlas files: merge shards.", no_args_is_help=True)
    app.add_typer(atlas_app, name="atlas")

    @atlas_app.command("merge")
    @friendly_errors
    def merge(
        shards: list[Path] = typer.Argument(..., help="shard atlas files (e.g. a batch's shards/*.db)"),
        into: Path = typer.Option(..., "--into", help="the atlas to merge into (created if missing)"),
    ) -> None:
        """Copy every run of the SHARDS (scores, labels, inputs, artifacts) into the atlas INTO.

        Idempotent: a run already there is not copied again. Every shard is checked first (a shard of
        a newer schema, or a file that is not an atlas, is refused and nothing is merged); each shard
        is then merged in one transaction."""

        def line(s: ShardMerge) -> None:
            console.print(f"  {escape(str(s.shard))}: {s.added} run(s) added, {s.already} already there "
                          f"({s.seconds:.2f} s)")

        report = merge_shards(shards, into, on_shard=line)
        console.print(f"merged {len(report.shards)} shard(s) into {escape(str(into))}: {report.added} run(s) added, "
                      f"{report.already} already there")
