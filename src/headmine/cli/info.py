"""`headmine info MODEL` and `headmine doctor MODEL`."""

from __future__ import annotations

import time

import typer
from rich.markup import escape
from rich.table import Table

from headmine.cli.common import Device, Dtype, TrustRemoteCode, console, friendly_errors, load_with_status
from headmine.models.loading import LoadedModel, cache_root
from headmine.pipeline.doctor import run_checks


def register(app: typer.Typer) -> None:
    @app.command()
    @friendly_errors
    def info(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
    ) -> None:
        """Print the model's head geometry, parameters, attention implementations and cache path."""
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        g = lm.geometry
        table = Table(title=f"{model}", show_header=False)
        rows = [
            ("family (model_type)", lm.provenance.model_type),
            ("adapter", type(lm.adapter).__name__),
            ("layers", str(g.n_layers)),
            ("query heads per layer", str(g.n_heads)),
            ("KV heads per layer", f"{g.n_kv_heads} ({'MHA' if g.n_kv_heads == g.n_heads else 'MQA' if g.n_kv_heads == 1 else 'GQA'})"),
            ("d_head / d_model", f"{g.d_head} / {g.d_model}"),
            ("vocabulary / context", f"{g.vocab_size} / {g.n_ctx}"),
            ("parameters", f"{sum(p.numel() for p in lm.model.parameters()):,}"),
            ("attention implementation", f"{lm.provenance.attn_implementation} (patterns: {'recomputed from q, k for the rows asked for' if lm.adapter.recomputes_patterns else 'eager while capturing'})"),
            ("attention implementations available", ", ".join(_available_attn(lm))),
            ("dtype / device", f"{lm.provenance.dtype} / {lm.provenance.device}"),
            ("source", f"{lm.provenance.source_kind}: {lm.provenance.source}"),
            ("file hash", lm.provenance.file_hash or "-"),
            ("cache", str(cache_root())),
        ]
        for key, value in rows:
            table.add_row(key, value)
        console.print(table)

    @app.command()
    @friendly_errors
    def doctor(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
    ) -> None:
        """Run the per-head wiring self-checks on MODEL and print each with its measured value."""
        start = time.perf_counter()
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        load_s = time.perf_counter() - start
        table = Table(title=f"headmine doctor {model}")
        table.add_column("check")
        table.add_column("measured", justify="right")
        table.add_column("what", style="dim")
        table.add_column("result")
        table.add_row("load", f"{load_s:.1f} s", "wall time", "[green]ok[/]")
        results = run_checks(lm)
        for r in results:
            table.add_row(escape(r.name), f"{r.value:.3g}", escape(r.detail), "[green]pass[/]" if r.passed else "[red]FAIL[/]")
        console.print(table)
        if not all(r.passed for r in results):
            raise typer.Exit(1)


def _available_attn(lm: LoadedModel) -> list[str]:
    model = lm.model
    out = ["eager"]
    if getattr(model, "_supports_sdpa", False):
        out.append("sdpa")
    if getattr(model, "_supports_flash_attn", False):
        out.append("flash_attention_2 (GPU)")
    return out
