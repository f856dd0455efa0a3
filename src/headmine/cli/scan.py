"""`headmine scan MODEL`, `headmine heads --atlas PATH`, `headmine export --atlas PATH --run ID`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from headmine.atlas import Atlas, export_run, write_job
from headmine.catalog import resolve_head_type
from headmine.cli.common import (
    Device,
    Dtype,
    TrustRemoteCode,
    check_atlas,
    console,
    friendly_errors,
    load_with_status,
)
from headmine.core.errors import InputError
from headmine.detectors import resolve_detectors
from headmine.pipeline.scan import ScanConfig, probe_sizes, scan_model


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def scan(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        detectors: list[str] = typer.Option(None, "--detectors", "-d", help="detector names (comma-separated or repeated); default all"),
        atlas: Path = typer.Option(None, "--atlas", help="write the run into this atlas (SQLite) file"),
        n: int = typer.Option(None, "--n", help="sequences per probe task (repeated tokens, natural text, IOI)"),
        batch_size: int = typer.Option(8, "--batch-size"),
        seed: int = typer.Option(0, "--seed"),
        top: int = typer.Option(5, "--top", help="heads shown per head type"),
        causal: bool = typer.Option(True, "--causal/--no-causal", help="ablate top-k vs random heads per type"),
        top_k: int = typer.Option(None, "--top-k", help="heads ablated per causal check"),
    ) -> None:
        """Run the head detectors (one capture pass per probe task) and print the top heads per type."""
        names = _split(detectors)
        resolve_detectors(names)  # unknown names fail before the model loads
        config = ScanConfig(detectors=tuple(names) if names else None, probe_params=probe_sizes(n),
                            batch_size=batch_size, seed=seed, causal=causal, top_k=top_k)
        check_atlas(atlas)  # a bad atlas path fails before the (long) scan
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bars:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=total)
                bars.update(tasks[stage], completed=done, total=total)

            result = scan_model(lm, config, progress=progress)
        table = Table(title=f"headmine scan {escape(model)}")
        for col in ("detector", "head type (stage)", "top heads", "causal check (top-k vs random)"):
            table.add_column(col)
        labelled = {lab["method"] for lab in result.labels()}
        for det in result.detectors:
            best = result.top(det.name, top)
            heads = ", ".join(f"L{r.layer}H{r.head} {r.value:.2f}" for r in best.itertuples()) or "-"
            check = result.causal.get(det.name)
            if check is None:
                verdict = "not tested"
            else:
                mark = "[green]confirmed[/]" if check.confirmed else "[yellow]unconfirmed[/]"
                verdict = (f"{mark} {check.metric} {check.topk_effect:+.3f} vs "
                           f"{check.random_mean:+.3f}±{check.random_std:.3f} (k={check.k})")
                if det.name not in labelled:  # the check tested the best-scoring heads, not a labelled type
                    verdict = f"[dim]no head at or above {det.threshold:g}: no label[/]; top-{check.k} check: {verdict}"
            table.add_row(det.name, f"{escape(det.head_type)} ({escape(det.stage)})", heads, verdict)
        console.print(table)
        console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
        if atlas is not None:
            run_id = write_job(result, str(atlas))
            console.print(f"wrote run [bold]{run_id}[/] to {escape(str(atlas))}")

    @app.command()
    @friendly_errors
    def heads(
        atlas: Path = typer.Option(..., "--atlas", help="atlas file"),
        model: str = typer.Option(None, "--model"),
        head_type: str = typer.Option(None, "--type", help="head type (any alias, e.g. induction)"),
        min_score: float = typer.Option(None, "--min-score"),
        limit: int = typer.Option(50, "--limit"),
    ) -> None:
        """List labelled heads from an atlas, best first within each head type."""

        canonical = resolve_head_type(head_type) if head_type else None
        with Atlas.open(atlas, readonly=True) as db:
            df = db.heads(model=model, head_type=canonical, min_score=min_score)
            notes = db.labels(model=model, head_type=canonical)
        if df.empty:
            console.print("no labelled heads match")
            return
        note_of = {(r.run_id, r.layer, r.head, r.method): r.note for r in notes.itertuples()}
        table = Table(title=f"heads in {escape(str(atlas))}")
        for col in ("model", "head", "type", "stage", "method", "score", "threshold", "run", "causal"):
            table.add_column(col)
        for r in df.head(limit).itertuples():
            table.add_row(escape(r.model), r.head_id, escape(r.head_type), escape(str(r.stage)), r.method,
                          f"{r.score:.3f}", "-" if r.threshold != r.threshold else f"{r.threshold:.2f}",
                          str(r.run_id), escape(str(note_of.get((r.run_id, r.layer, r.head, r.method)) or "")))
        console.print(table)

    @app.command()
    @friendly_errors
    def export(
        atlas: Path = typer.Option(..., "--atlas", help="atlas file"),
        run: int = typer.Option(..., "--run", help="run id"),
        what: str = typer.Option("scores", "--what", help="scores | inputs"),
        fmt: str = typer.Option("csv", "--format", help="csv | parquet | jsonl"),
        out: Path = typer.Option(None, "--out", help="output file (default run<ID>_<what>.<format>)"),
    ) -> None:
        """Export one run's scores or exact inputs (token ids)."""

        if what not in ("scores", "inputs"):
            raise InputError(f"cannot export {what!r}", "use --what scores or --what inputs")
        target = out or Path(f"run{run}_{what}.{fmt}")
        with Atlas.open(atlas, readonly=True) as db:
            path = export_run(db, run, what, fmt, target)  # type: ignore[arg-type]
        console.print(f"wrote {escape(str(path))}")
