"""`headmine ablate | patch | attribute | lens MODEL --task T`: causal methods from the command line;
`headmine method NAME MODEL --task T --set key=value` runs any registered method, plugins included.

Each command picks a registered causal method and passes all its options; the method's own config
dataclass keeps the ones it declares (see ``_config``), so no command branches per option.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, cast

import numpy as np
import typer
from rich.table import Table

from headmine.atlas import write_job
from headmine.causal.logit_lens import LensResult
from headmine.causal.methods import METHODS, CausalMethod, MethodConfig, get_method
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
from headmine.pipeline.causal import CausalRun, run_causal
from headmine.report.heatmap import write_heatmap_html

TASK_HELP = "ioi, factual, successor, arithmetic, agreement, induction, or a path to a JSONL file"


def _heat_table(matrix: Any, title: str) -> Table:
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


def top_heads(matrix: np.ndarray, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest |value| in a [L, H] matrix (NaN heads, e.g. not swept, skipped)."""
    arr = np.asarray(matrix, dtype=float)
    flat = np.where(np.isfinite(arr), np.abs(arr), -np.inf).ravel()
    order = [int(i) for i in np.argsort(-flat, kind="stable")[:k] if np.isfinite(flat[i])]
    return [(i // arr.shape[1], i % arr.shape[1], float(arr.ravel()[i])) for i in order]


def _finish(run: CausalRun, atlas: str | None, html: str | None, top: int, title: str) -> None:
    arts = run.result.artifacts()
    base = arts.get("baseline")
    kind = run.inputs.metric.kind
    if base is not None:
        msg = f"baseline {kind}: {float(base.mean()):.3f} over {base.shape[0]} prompts"
        if kind == "logit_diff":
            msg += f"; target preferred on {float((base > 0).mean()):.0%}"
        ref = arts.get("reference")
        if ref is not None:
            msg += f"; other run: {float(ref.mean()):.3f}"
        console.print(msg)
    if run.matrix is not None:
        console.print(_heat_table(run.matrix, title))
        if top > 0:
            heads = ", ".join(f"L{layer}H{head} {v:+.3f}" for layer, head, v in top_heads(run.matrix, top))
            console.print(f"top {top} heads by |effect|: {heads}")
    if html:
        if run.matrix is None:
            console.print("[yellow]no layer x head matrix for this method; no heatmap written[/]")
        else:
            console.print(f"heatmap: {write_heatmap_html(run.matrix, html, title=title)}")
    if atlas:
        run_id = write_job(run, atlas)
        console.print(f"atlas: run {run_id} written to {atlas}")
    console.print(f"[dim]{run.duration_s:.1f} s[/]")


def _lens_table(res: LensResult, metric_kind: str, title: str) -> Table:
    table = Table(title=title)
    for col in ("after", "p(target)", "rank (mean)", "rank (median)", metric_kind):
        table.add_column(col, justify="right")
    for depth in range(res.prob.shape[0]):
        table.add_row("embed" if depth == 0 else f"L{depth - 1}", f"{float(res.prob[depth].mean()):.4f}",
                      f"{float(res.rank[depth].float().mean()):.1f}", f"{float(res.rank[depth].float().median()):.0f}",
                      f"{float(res.metric[depth].mean()):.3f}")
    return table


def _config(method: CausalMethod[Any], options: dict[str, Any]) -> MethodConfig:
    """The method's own config from the command's options: those its dataclass declares (None = its default)."""
    declared = {f.name for f in fields(method.config_cls)}
    return method.config(**{k: v for k, v in options.items() if k in declared and v is not None})


def _run(model: str, method_name: str, load: dict[str, Any], **options: Any) -> CausalRun:
    """Run one causal method; ``load`` holds the model-loading options (device, dtype, trust_remote_code)."""
    method = get_method(method_name)
    config = _config(method, options)  # validate before the (slow) model load
    lm = load_with_status(model, **load)
    with console.status(f"{method.name} on {config.task}"):
        return run_causal(lm, config, method=method)


def _load(device: str, dtype: str, trust_remote_code: bool) -> dict[str, Any]:
    return {"device": device, "dtype": dtype, "trust_remote_code": trust_remote_code}


def parse_settings(pairs: list[str], method: CausalMethod[Any]) -> dict[str, Any]:
    """``["mode=mean", "factor=0.5"]`` -> the method's config fields, each converted to the field's
    default's type (bool, int, float or str); an unknown field or a bad value is an InputError."""
    declared = {f.name: f for f in fields(method.config_cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"cannot read --set {pair!r}", "write --set key=value, e.g. --set mode=mean")
        if key not in declared:
            raise InputError(f"method {method.name!r} has no option {key!r}",
                             f"its options: {', '.join(sorted(declared))}")
        default = getattr(method.config_cls(task="_"), key, None)
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1", "yes")
            elif isinstance(default, int | float):
                out[key] = type(default)(text)
            else:
                out[key] = text
        except ValueError:
            raise InputError(f"--set {key}={text!r}: expected a {type(default).__name__}",
                             f"e.g. --set {key}={default!r}") from None
    return out


def register(app: typer.Typer) -> None:
    @app.command("method")
    @friendly_errors
    def method_command(
        name: str = typer.Argument(..., help="registered causal method (plugins included)"),
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        n: int = typer.Option(32, help="number of prompts (JSONL: the first n lines)"),
        seed: int = typer.Option(0),
        metric: str = typer.Option(None, help="logit_diff | logit | answer_logprob | prob (default: the task's)"),
        setting: list[str] = typer.Option([], "--set", help="a method option as key=value (repeatable)"),
        atlas: str = typer.Option(None, help="write the run into this atlas file"),
        html: str = typer.Option(None, help="write the layer x head heatmap to this HTML file"),
        top: int = typer.Option(10, help="heads to list"),
    ) -> None:
        """Run any registered causal method by name (list them with `headmine methods`)."""
        method = get_method(name)
        check_atlas(atlas)
        run = _run(model, method.name, _load(device, dtype, trust_remote_code), task=task, n=n, seed=seed, metric=metric, **parse_settings(setting, method))
        _finish(run, atlas, html, top, f"{method.name}, {task}: {run.inputs.metric.kind}")

    @app.command("methods")
    def methods_command() -> None:
        """List the registered causal methods (built-in and plugins) and their options."""
        table = Table(title="causal methods")
        for col in ("name", "atlas run kind", "options"):
            table.add_column(col)
        for name, method in METHODS.items():
            base = {f.name for f in fields(MethodConfig)}
            opts = ", ".join(f.name for f in fields(method.config_cls) if f.name not in base) or "-"
            table.add_row(name, method.run_kind, opts)
        console.print(table)

    @app.command()
    @friendly_errors
    def ablate(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
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
        check_atlas(atlas)
        run = _run(model, "ablation", _load(device, dtype, trust_remote_code), task=task, mode=mode, reference=reference, n=n, seed=seed, metric=metric)
        _finish(run, atlas, html, top, f"{mode} ablation, {task}: change of {run.inputs.metric.kind}")

    @app.command()
    @friendly_errors
    def patch(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
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
        check_atlas(atlas)
        run = _run(model, "path_patching" if path_to else "patching", _load(device, dtype, trust_remote_code), task=task, per_position=per_position,
                   direction=direction, receivers=path_to, receiver_input=receiver_input, n=n, seed=seed, metric=metric)
        if path_to:
            title = f"path patching -> {path_to}, {task}"
        else:
            title = f"{direction} patching{' (max over positions)' if per_position else ''}, {task}"
        _finish(run, atlas, html, top, f"{title}: change of {run.inputs.metric.kind}")

    @app.command()
    @friendly_errors
    def attribute(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
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
        check_atlas(atlas)
        run = _run(model, "dla" if dla else "attribution", _load(device, dtype, trust_remote_code), task=task, ig_steps=ig_steps, n=n, seed=seed, metric=metric)
        if dla:
            title = f"direct logit attribution, {task}"
        else:
            title = f"attribution patching{f' (IG, {ig_steps} steps)' if ig_steps else ''}, {task}"
        _finish(run, atlas, html, top, f"{title}: {run.inputs.metric.kind}")

    @app.command()
    @friendly_errors
    def lens(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
        n: int = typer.Option(32), seed: int = typer.Option(0),
        metric: str = typer.Option(None, help="logit_diff | logit | answer_logprob | prob"),
        atlas: str = typer.Option(None, help="write the run into this atlas file"),
    ) -> None:
        """Logit lens: the answer's probability and rank after every layer."""
        check_atlas(atlas)
        run = _run(model, "logit_lens", _load(device, dtype, trust_remote_code), task=task, n=n, seed=seed, metric=metric)
        title = f"logit lens, {task}"
        console.print(_lens_table(cast(LensResult, run.result), run.inputs.metric.kind, title))
        _finish(run, atlas, None, 0, title)
