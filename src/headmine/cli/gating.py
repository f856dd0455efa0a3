"""`headmine gate` (Causal Head Gating) and `headmine gate-contrast` (contrastive CHG)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from headmine.atlas import write_job
from headmine.causal.contrastive_gating import (
    INSTRUCTIONS,
    ContrastConfig,
    builtin_contrast_split,
    load_pair_files,
    split_pair_rows,
)
from headmine.causal.head_gating import LABELS, CHGConfig, CHGResult, load_data_file, task_data
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
from headmine.pipeline.gating import contrast_model, gate_model, head_labels


@contextmanager
def stage_bars() -> Iterator[Callable[[str, int, int, float], None]]:
    """A rich progress bar per stage; the callback shows the current loss."""
    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:

        def update(stage: str, step: int, total: int, loss: float) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(f"stage {stage}", total=total, loss="-")
            progress.update(bars[stage], completed=step, loss="-" if loss != loss else f"{loss:.4f}")

        yield update


def _updates(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        vals = [int(p) for p in parts]
    except ValueError as err:
        raise InputError(f"--updates {text!r} is not a list of integers", "e.g. --updates 500,500,500 or --updates 50") from err
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise InputError(f"--updates takes 1 or 3 numbers, got {len(vals)}", "e.g. --updates 500,500,500")
    return (vals[0], vals[1], vals[2])


#: heads listed per label; the rest are counted
MAX_LISTED = 24


def print_convergence(res: CHGResult) -> None:
    """The verdict, with the relative objective change and gradient norm of each stage; a fit that has
    not converged is flagged and its labels called evidence."""
    conv = res.convergence
    if conv is None:
        console.print("[yellow]convergence not assessed: the labels below are evidence, not findings[/]")
        return
    stages = ", ".join(f"{name} rel. change {d.worst_rel_change:.3g} grad {d.to_dict()['grad_norm']:.2g}"
                       for name, d in conv.stages.items())
    if conv.converged:
        console.print(f"[green]converged[/] ({stages})")
    else:
        console.print(f"[bold yellow]NOT CONVERGED[/]: {'; '.join(conv.reasons)} ({stages})")
        console.print("[yellow]the labels below are evidence, not findings; none is written to the atlas "
                      "(more --updates or the paper preset may converge)[/]")


def print_heads(res: CHGResult) -> None:
    """The heads of each label, highest score first (score = F, N or I averaged over seeds)."""
    k = res.G.shape[0]
    by_label: dict[str, list[tuple[float, str]]] = {}
    for layer, head, lab, value, c in head_labels(res):
        by_label.setdefault(lab, []).append((value, f"L{layer}H{head} {value:.2f}" + ("" if c == k else f" ({c}/{k})")))
    score = {"facilitating": "F", "interfering": "N", "irrelevant": "I", "inconsistent": "F"}
    for lab in LABELS[:4]:
        heads = sorted(by_label.get(lab, []), key=lambda t: -t[0])
        if not heads:
            console.print(f"{lab}: none")
            continue
        more = f" ... and {len(heads) - MAX_LISTED} more" if len(heads) > MAX_LISTED else ""
        console.print(f"{lab} ({len(heads)}, by {score[lab]}; (c/{k}) = labelled so in c of {k} seeds): "
                      + ", ".join(t[1] for t in heads[:MAX_LISTED]) + more)


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def gate(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        data: Path = typer.Option(None, "--data", help=".jsonl with prompt/target rows (loss on target) or a text file"),
        task: str = typer.Option(None, "--task", help="a built-in task (ioi, factual, induction, ...)"),
        n: int = typer.Option(None, help="prompts to build for --task (or rows kept from --data); default: the "
                              "preset's rows (quick 8, standard 16, paper 64)"),
        seeds: int = typer.Option(None, help="gate sets fitted together in one batched pass (K)"),
        preset: str = typer.Option("quick", help="quick (~2.5 CPU-minutes on SmolLM2 IOI), standard (~6) or paper "
                                   "(3 x 500 updates, batch 64, 10 seeds); every fit prints its convergence verdict"),
        updates: str = typer.Option(None, help="updates per stage: one number or three (lam=0, G+, G-)"),
        batch_size: int = typer.Option(None, help="rows per update"),
        micro_batch: int = typer.Option(None, help="rows x seeds per forward pass (gradient accumulation)"),
        lam: float = typer.Option(None, help="regulariser weight (G+ uses +lam, G- uses -lam)"),
        seed: int = typer.Option(0, help="base seed (gate inits, data order, task prompts)"),
        truncation: str = typer.Option("error", help="for --data: error | truncate | chunk (text files)"),
        atlas: Path = typer.Option(Path("atlas.db"), help="atlas file to write the run into"),
        no_atlas: bool = typer.Option(False, "--no-atlas", help="do not write the atlas"),
        no_ablation: bool = typer.Option(False, "--no-ablation", help="skip the targeted-ablation check"),
        no_agreement: bool = typer.Option(False, "--no-agreement", help="skip the agreement with activation patching"),
    ) -> None:
        """Causal Head Gating: which heads facilitate, interfere with or are irrelevant to a task."""
        if (data is None) == (task is None):
            raise InputError("give exactly one of --data FILE or --task NAME", "e.g. --task ioi or --data prompts.jsonl")
        cfg = CHGConfig.preset_for(preset, seeds=seeds, updates=_updates(updates), batch_size=batch_size,
                                   micro_batch=micro_batch, lam=lam, seed=seed)
        n = cfg.rows if n is None else n
        check_atlas(None if no_atlas else atlas)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        prompts = None
        if data is not None:
            ds = load_data_file(lm, data, limit=n, truncation=truncation)
            name = data.name
        else:
            ds, prompts = task_data(lm, task, n=n, seed=seed)
            name = task
        console.print(f"CHG on {name}: {len(ds)} rows, {cfg.seeds} seed(s), updates {cfg.updates}, batch {cfg.batch_size}")
        with stage_bars() as bars:
            report = gate_model(lm, ds, cfg, task=name, prompts=prompts, ablation=not no_ablation,
                                agreement=not no_agreement, progress=bars)
        res = report.result
        if res.status != "complete":
            console.print(f"[yellow]stopped early:[/] {res.message}")
        shares = res.shares()
        table = Table(title=f"CHG {model} / {name} ({cfg.seeds} seeds, {res.duration_s:.0f} s)")
        table.add_column("label")
        table.add_column("share of heads (pooled seeds)", justify="right")
        table.add_column("always", justify="right")
        table.add_column("always if seeds were independent", justify="right")
        table.add_column("any", justify="right")
        for lab, key in zip(LABELS, ("F", "N", "I", None, None), strict=True):
            table.add_row(lab, f"{shares[lab]:.1%}", f"{shares[key + '_always']:.1%}" if key else "",
                          f"{shares[key + '_always_chance']:.1%}" if key and res.G.shape[0] > 1 else "",
                          f"{shares[key + '_any']:.1%}" if key else "")
        console.print(table)
        if res.G.shape[0] > 1:
            agr = res.seed_agreement()
            console.print("seed agreement: " + ", ".join(f"{k} {v:.2f}" for k, v in agr.items()))
        print_convergence(res)
        print_heads(res)
        if report.ablation:
            console.print(f"targeted ablation (delta log-prob, top-k := 0 vs 1), k = {list(report.ks)}")
            for k, v in report.ablation.items():
                console.print(f"  by {k}: " + " ".join(f"{x:+.3f}" for x in v))
        if report.agreement:
            a = report.agreement
            console.print(f"patching agreement: {a['n_mediating']} mediating heads, mean F {a['mean_mediating']:.2f} vs "
                          f"{a['mean_other']:.2f}, Welch t({a['df']:.1f}) = {a['t']:.2f}, p = {a['p']:.2g}")
        if not no_atlas:
            run_id = write_job(report, atlas)
            console.print(f"wrote run {run_id} to {atlas}")

    @app.command("gate-contrast")
    @friendly_errors
    def gate_contrast(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        retain: Path = typer.Option(None, "--retain", help="retain set (.jsonl prompt/target), paired row by row"),
        forget: Path = typer.Option(None, "--forget", help="forget set (.jsonl prompt/target), paired row by row"),
        builtin: str = typer.Option(None, "--builtin", help="built-in pair: the format to forget (instruction | fewshot)"),
        shots: int = typer.Option(5, help="examples in the built-in few-shot prompts"),
        heldout_task: list[str] = typer.Option(
            None, "--heldout-task", help=f"built-in task(s) held out from the fit, accuracy measured on them "
            f"(default singular_plural; one of {', '.join(INSTRUCTIONS)})"),
        heldout_frac: float = typer.Option(0.25, "--heldout-frac", help="share of --retain/--forget pairs held out "
                                           "from the fit; accuracy is measured on them"),
        n: int = typer.Option(None, help="rows kept from --retain/--forget"),
        seeds: int = typer.Option(None, help="gate sets fitted together"),
        preset: str = typer.Option("quick", help="quick or paper (500 updates, lr 0.1 -> 0.01, batch 64)"),
        updates: int = typer.Option(None, help="updates"),
        batch_size: int = typer.Option(None, help="rows per update"),
        seed: int = typer.Option(0, help="base seed"),
        atlas: Path = typer.Option(Path("atlas.db"), help="atlas file to write the run into"),
        no_atlas: bool = typer.Option(False, "--no-atlas", help="do not write the atlas"),
    ) -> None:
        """Contrastive CHG: gates that forget the --forget format while keeping the --retain one."""
        if builtin is None and (retain is None or forget is None):
            raise InputError("give --retain A --forget B, or --builtin instruction|fewshot", "e.g. --builtin instruction")
        cfg = ContrastConfig.preset_for(preset, seeds=seeds, updates=updates, batch_size=batch_size, seed=seed)
        check_atlas(None if no_atlas else atlas)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        if builtin is not None:
            split = builtin_contrast_split(lm, forget=builtin, heldout_tasks=tuple(heldout_task or ("singular_plural",)),
                                           shots=shots, seed=seed)
        else:
            split = split_pair_rows(*load_pair_files(lm, retain, forget, limit=n), heldout_frac=heldout_frac, seed=seed)
        r, f = split.retain, split.forget
        console.print(f"contrastive CHG: retain {r.source} / forget {f.source}, fit on {len(r)} pairs, "
                      f"{split.heldout} ({len(split.eval_retain)} pairs), {cfg.updates} updates")
        with stage_bars() as bars:
            report = contrast_model(lm, split, cfg, progress=bars)
        if report.result.status != "complete":
            console.print(f"[yellow]stopped early:[/] {report.result.message}")
        a = report.accuracy
        table = Table(title=f"token accuracy per problem (mean) on the {split.heldout} ({a['n_heldout']} pairs, not fitted on)")
        for col in ("format", "without gates", "with gates", "fit rows: without", "fit rows: with"):
            table.add_column(col)
        for name, source in (("retain", split.eval_retain.source), ("forget", split.eval_forget.source)):
            table.add_row(f"{name} ({source})", f"{a[name + '_before']:.1%}", f"{a[name + '_after']:.1%}",
                          f"{a['fit_' + name + '_before']:.1%}", f"{a['fit_' + name + '_after']:.1%}")
        console.print(table)
        if not no_atlas:
            run_id = write_job(report, atlas)
            console.print(f"wrote run {run_id} to {atlas}")
