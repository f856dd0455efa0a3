"""`headmine batch PLAN`: run a plan of jobs (models x tasks x methods x budgets), locally or on Ray.

The plan format is documented in ``headmine.pipeline.plan_file``; the run in ``headmine.pipeline.batch``.
One line is printed per job as it finishes (or is skipped, retried, or fails), under one overall bar.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers.utils import logging as hf_logging

from headmine.cli.console import console, friendly_errors
from headmine.pipeline.batch import BatchEvent, run_batch
from headmine.pipeline.plan_file import load_plan

STYLE = {"done": "green", "skipped": "dim", "cached": "dim", "retry": "yellow", "failed": "bold red"}


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def batch(
        plan: Path = typer.Argument(..., help="the plan file (TOML): models x jobs, see the README's 'Many jobs'"),
        ray: str = typer.Option(None, "--ray", help="run on Ray: 'auto' (a running local cluster, else a new one) "
                                                    "or a cluster address; default: one job after another here"),
        atlas: Path = typer.Option(Path("headmine-out/atlas.db"), "--atlas", help="the atlas the jobs end in"),
        shards: Path = typer.Option(None, "--shards", help="one shard atlas per job (default: ATLAS's folder/shards)"),
        max_retries: int = typer.Option(None, "--max-retries", help="tries after a job's first failure "
                                                                    "(default: the plan's max_retries, else 0)"),
    ) -> None:
        """Run every job of PLAN, each into its own shard, then merge the shards into ATLAS.

        Jobs already in ATLAS are skipped, so running a plan again does only what is missing. A failed
        job is reported with its error and tried again up to --max-retries; the others go on. The exit
        status is 1 when a job failed for good."""
        checked = load_plan(plan)  # every problem in the file fails here, before any job runs
        hf_logging.disable_progress_bar()
        shard_dir = shards if shards is not None else atlas.parent / "shards"
        atlas.parent.mkdir(parents=True, exist_ok=True)
        n = len(checked.jobs)
        where = f"on Ray ({ray})" if ray else "here, one after another"
        console.print(f"[bold]headmine batch {escape(str(plan))}[/]: {n} job(s) {where}; shards in "
                      f"{escape(str(shard_dir))}, atlas {escape(str(atlas))}")
        finished = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as bars:
            overall = bars.add_task("[bold]jobs", total=n)

            def on_event(event: BatchEvent) -> None:
                nonlocal finished
                r, status = event.report, event.status
                if status == "started":
                    bars.update(overall, description=f"[bold]jobs[/] ({escape(r.job.label)}: {event.message})")
                    return
                if status in ("done", "skipped", "cached", "failed"):
                    finished += 1
                    bars.update(overall, completed=finished)
                detail = {
                    "done": f"{r.runs} run(s), load {r.load_s:.1f} s, run {r.run_s:.1f} s, "
                            f"{r.attempts} attempt(s) [dim]{escape(r.worker)}[/]",
                    "retry": f"attempt {r.attempts} failed, trying again: {escape(event.message)}",
                    "failed": f"after {r.attempts} attempt(s): {escape(event.message)}",
                }.get(status, escape(event.message))
                tag = f"[{STYLE[status]}]{status:<7}[/]"
                bars.console.print(f"[{finished:>{len(str(n))}}/{n}] {tag} {escape(r.job.label)}: {detail}")

            result = run_batch(checked, atlas, shard_dir, ray=ray, max_retries=max_retries, on_event=on_event)
        counts = {s: sum(r.status == s for r in result.jobs) for s in ("done", "skipped", "cached", "failed")}
        merge = result.merge
        merged = (f"; merged {merge.added} run(s) into {escape(str(atlas))} ({merge.already} already there)"
                  if merge is not None else "; nothing to merge")
        startup = f", Ray start-up {result.startup_s:.1f} s" if result.backend == "ray" else ""
        console.print(f"{counts['done']} done, {counts['skipped']} skipped (in the atlas), {counts['cached']} from "
                      f"earlier shards, {counts['failed']} failed{merged}; {result.seconds:.0f} s{startup}")
        for r in result.failed:
            console.print(f"[bold red]failed[/] {escape(r.job.label)} ({escape(r.job.where)}): {escape(r.errors[-1])}")
        if result.failed:
            raise typer.Exit(1)
