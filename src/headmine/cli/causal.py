"""`headmine ablate | patch | attribute | lens MODEL --task T`: causal methods from the command line."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from headmine.cli.common import console, friendly_errors, load_with_status

TASK_HELP = "ioi, factual, successor, arithmetic, agreement, induction, or a path to a JSONL file"


def _heat_table(matrix: Any, title: str) -> Table:
    import numpy as np

    arr = np.asarray(matrix, dtype=float)
    lim = float(np.nanmax(np.abs(arr))) or 1.0
    table = Table(title=title, show_lines=False, pad_edge=False)
    table.add_column("layer", justify="right")
    for h in range(arr.shape[1]):
        table.add_column(f"H{h}", justify="right")
    for layer in range(arr.shape[0]):
        cells = []
        for v in arr[layer]:
            if not np.isfinite(v):
                cells.append("[dim]-[/]")
                continue
            frac = abs(v) / lim
            style = "bold " if frac > 0.5 else "" if frac > 0.15 else "dim "
            colour = "red" if v < 0 else "blue"
            cells.append(f"[{style}{colour}]{v:+.2f}[/]")
        table.add_row(str(layer), *cells)
    return table


def _finish(run: Any, atlas: str | None, html: str | None, top: int, title: str) -> None:
    res = run.result
    base = getattr(res, "baseline", None)
    if base is not None:
        msg = f"baseline {run.inputs.metric.kind}: {float(base.mean()):.3f} over {base.shape[0]} prompts"
        if run.inputs.metric.kind == "logit_diff":
            msg += f"; target preferred on {float((base > 0).float().mean()):.0%}"
        ref = getattr(res, "reference", None)
        if ref is not None:
            msg += f"; other run: {float(ref.mean()):.3f}"
        console.print(msg)
    if run.matrix is not None:
        console.print(_heat_table(run.matrix, title))
        if hasattr(res, "top"):
            heads = ", ".join(f"L{layer}H{head} {v:+.3f}" for layer, head, v in res.top(top))
            console.print(f"top {top} heads by |effect|: {heads}")
    elif hasattr(res, "prob"):
        table = Table(title=title)
        for col in ("after", "p(target)", "rank (mean)", "rank (median)", run.inputs.metric.kind):
            table.add_column(col, justify="right")
        for depth in range(res.prob.shape[0]):
            table.add_row("embed" if depth == 0 else f"L{depth - 1}", f"{float(res.prob[depth].mean()):.4f}",
                          f"{float(res.rank[depth].float().mean()):.1f}", f"{float(res.rank[depth].float().median()):.0f}",
                          f"{float(res.metric[depth].mean()):.3f}")
        console.print(table)
    if html:
        from headmine.report.heatmap import write_heatmap_html

        if run.matrix is None:
            console.print("[yellow]no layer x head matrix for this method; no heatmap written[/]")
        else:
            console.print(f"heatmap: {write_heatmap_html(run.matrix, html, title=title)}")
    if atlas:
        from headmine.pipeline.causal import write_causal

        run_id = write_causal(run, atlas)
        console.print(f"atlas: run {run_id} written to {atlas}")
    console.print(f"[dim]{run.duration_s:.1f} s[/]")


def _run(model: str, **kw: Any) -> Any:
    from headmine.pipeline.causal import CausalConfig, run_causal

    config = CausalConfig(**kw)  # validate before the (slow) model load
    lm = load_with_status(model)
    with console.status(f"{config.method} on {config.task}"):
        return run_causal(lm, config)


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def ablate(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        mode: str = typer.Option("zero", help="zero | mean | resample"),
        reference: str = typer.Option("self", help="mean/resample reference: self (the prompts) or corrupted"),
        n: int = typer.Option(32, help="number of prompts (JSONL: the first n lines)"),
        seed: int = typer.Option(0),
        metric: str = typer.Option(None, help="logit_diff | logit | answer_logprob | prob (default: the task's)"),
        atlas: str = typer.Option(None, help="write the run into this atlas file"),
        html: str = typer.Option(None, help="write the layer x head heatmap to this HTML file"),
        top: int = typer.Option(10, help="heads to list"),
    ) -> None:
        """Ablate every head in turn (exact fast sweep) and show the metric change per head."""
        run = _run(model, method="ablation", task=task, mode=mode, reference=reference, n=n, seed=seed, metric=metric)
        _finish(run, atlas, html, top, f"{mode} ablation, {task}: change of {run.inputs.metric.kind}")

    @app.command()
    @friendly_errors
    def patch(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        per_position: bool = typer.Option(False, "--per-position", help="patch one position at a time"),
        direction: str = typer.Option("noising", help="noising (clean run, corrupted z) | denoising"),
        path_to: str = typer.Option(None, "--path-to", help="path patching: 'logits' or receiver heads like L1H2,L1H3"),
        receiver_input: str = typer.Option("qkv", help="path patching: receiver inputs patched (q, k, v)"),
        n: int = typer.Option(32), seed: int = typer.Option(0),
        metric: str = typer.Option(None, help="logit_diff | logit | answer_logprob | prob"),
        atlas: str = typer.Option(None, help="write the run into this atlas file"),
        html: str = typer.Option(None, help="write the layer x head heatmap to this HTML file"),
        top: int = typer.Option(10),
    ) -> None:
        """Activation patching per head (or path patching with --path-to) between clean and corrupted prompts."""
        if path_to:
            run = _run(model, method="path_patching", task=task, receivers=path_to, receiver_input=receiver_input,
                       n=n, seed=seed, metric=metric)
            title = f"path patching -> {path_to}, {task}"
        else:
            run = _run(model, method="patching", task=task, per_position=per_position, direction=direction, n=n,
                       seed=seed, metric=metric)
            title = f"{direction} patching{' (max over positions)' if per_position else ''}, {task}"
        _finish(run, atlas, html, top, f"{title}: change of {run.inputs.metric.kind}")

    @app.command()
    @friendly_errors
    def attribute(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        ig_steps: int = typer.Option(0, "--ig-steps", help="0: attribution patching; N: integrated gradients with N steps"),
        dla: bool = typer.Option(False, "--dla", help="direct logit attribution instead (no corruption needed)"),
        n: int = typer.Option(32), seed: int = typer.Option(0),
        metric: str = typer.Option(None, help="logit_diff | logit | answer_logprob | prob"),
        atlas: str = typer.Option(None, help="write the run into this atlas file"),
        html: str = typer.Option(None, help="write the layer x head heatmap to this HTML file"),
        top: int = typer.Option(10),
    ) -> None:
        """Attribution patching for all heads in one forward/backward (or --dla: direct logit attribution)."""
        if dla:
            run = _run(model, method="dla", task=task, n=n, seed=seed, metric=metric)
            title = f"direct logit attribution, {task}"
        else:
            run = _run(model, method="attribution", task=task, ig_steps=ig_steps, n=n, seed=seed, metric=metric)
            title = f"attribution patching{f' (IG, {ig_steps} steps)' if ig_steps else ''}, {task}"
        _finish(run, atlas, html, top, f"{title}: {run.inputs.metric.kind}")

    @app.command()
    @friendly_errors
    def lens(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        n: int = typer.Option(32), seed: int = typer.Option(0),
        metric: str = typer.Option(None, help="logit_diff | logit | answer_logprob | prob"),
        atlas: str = typer.Option(None, help="write the run into this atlas file"),
    ) -> None:
        """Logit lens: the answer's probability and rank after every layer."""
        run = _run(model, method="logit_lens", task=task, n=n, seed=seed, metric=metric)
        _finish(run, atlas, None, 0, f"logit lens, {task}")
