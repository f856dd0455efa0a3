"""`headmine mine [MODEL]`: the main job with one progress display, then the report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from headmine.cli.common import (
    Device,
    Dtype,
    TrustRemoteCode,
    check_atlas,
    console,
    friendly_errors,
    load_with_status,
)
from headmine.pipeline.mine import mine as run_mine
from headmine.pipeline.mine import plan
from headmine.report import build_report


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def mine(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        atlas: Path = typer.Option(Path("headmine-out/atlas.db"), help="atlas database to write (created if missing)"),
        out: Path = typer.Option(Path("headmine-out/report"), help="folder for the HTML report"),
        budget: str = typer.Option("quick", help="quick | standard | thorough"),
        fresh: bool = typer.Option(False, "--fresh", help="start a new session instead of resuming this one"),
        report: bool = typer.Option(True, "--report/--no-report", help="write the HTML report at the end"),
    ) -> None:
        """Mine MODEL: scan all head types, confirm causally, patch/attribute IOI, gate heads (CHG),
        analyse factual recall, store everything in the atlas and write the report. Resumable."""
        started = time.perf_counter()
        atlas.parent.mkdir(parents=True, exist_ok=True)
        check_atlas(atlas)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        todo = plan(lm, atlas, budget=budget, fresh=fresh)
        stages = todo.stages
        console.print(f"[bold]headmine mine {model}[/] (budget {budget}, session {todo.group_id}): {len(stages)} stages, "
                      f"{len(stages) - len(todo.todo)} already in {atlas}; estimated {todo.estimate_s / 60:.1f} min here")
        weights = {s.name: s.cost for s in stages}
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bars:
            overall = bars.add_task("[bold]all stages", total=sum(weights.values()))
            current = bars.add_task("", total=1)
            state = {"stage": "", "label": "", "base": 0.0}

            def on_stage(stage, i, n):
                if state["stage"]:
                    state["base"] += weights[state["stage"]]
                state.update(stage=stage.name, label=f"[{i + 1}/{n}] {stage.name}")
                bars.update(overall, completed=state["base"])
                bars.reset(current, total=1, description=state["label"])

            def progress(what: str, done_: int, total: int) -> None:
                frac = min(1.0, done_ / total) if total else 0.0
                bars.update(current, completed=frac, description=f"{state['label']}: {what}")
                bars.update(overall, completed=state["base"] + frac * weights[state["stage"]])

            result = run_mine(lm, atlas, budget=budget, group_id=todo.group_id, on_stage=on_stage, progress=progress)
            bars.update(overall, completed=sum(weights.values()))
            bars.update(current, completed=1)
        for name in result.skipped:
            console.print(f"  [dim]skipped (already in the atlas): {name}[/]")
        for note in result.notes:
            console.print(f"  [yellow]{note}[/]")
        for name, seconds in result.timings.items():
            console.print(f"  {name}: run {result.run_ids[name]} in {seconds:.0f} s")
        if report and not result.run_ids and not result.skipped:
            console.print("[yellow]no stage applied to this model, so there is nothing to report[/]")
        elif report:
            files = build_report(atlas, out, model=model)
            console.print(f"report: {files.pages.get(model, files.index)}")
        console.print(f"done in {time.perf_counter() - started:.0f} s; atlas {atlas}")
