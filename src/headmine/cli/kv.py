"""`headmine kv MODEL`: retrieval heads (scored on fit needles) keep a full KV cache, the others sink +
recent window; needle accuracy and KV memory on held-out needles at several lengths and budgets, against
random full heads and the full cache."""

from __future__ import annotations

import typer

from headmine.apply.kv import KVConfig, run_kv
from headmine.cli.apply_common import SavePath, Seed, finish
from headmine.cli.common import (
    AtlasPath,
    Device,
    Dtype,
    TrustRemoteCode,
    check_atlas,
    console,
    friendly_errors,
    load_with_status,
)
from headmine.core.errors import InputError


def _numbers(values: list[str] | None, cast: type, name: str) -> tuple | None:
    out = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    if not out:
        return None
    try:
        return tuple(cast(v) for v in out)
    except ValueError as err:
        raise InputError(f"{name} {out} are not {cast.__name__} numbers", f"e.g. {name} 256,512") from err


def register(app: typer.Typer) -> None:
    @app.command(name="kv")
    @friendly_errors
    def kv_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        n: int = typer.Option(8, "--n", help="needles (split into fit and held-out needles)"),
        lengths: list[str] = typer.Option(None, "--lengths", help="context lengths in tokens (default 256,512,1024)"),
        depths: list[str] = typer.Option(None, "--depths", help="needle depths in [0, 1] (default 0.5)"),
        budgets: list[str] = typer.Option(None, "--budgets", help="shares of KV heads kept full (default 0.25,0.5)"),
        save_budget: float = typer.Option(0.5, "--save-budget", help="the budget of the saved policy"),
        sink: int = typer.Option(16, "--sink", help="first tokens a streaming head keeps"),
        recent: int = typer.Option(64, "--recent", help="most recent tokens a streaming head keeps"),
        random_draws: int = typer.Option(2, "--random-draws", help="random full-head sets per budget (baseline)"),
        atlas: AtlasPath = None, save: SavePath = None, seed: Seed = 0,
    ) -> None:
        """Mixed KV cache (DuoAttention / RazorAttention) from retrieval heads (Wu et al. 2024) on MODEL."""
        check_atlas(atlas)
        base = KVConfig()
        cfg = KVConfig(n=n, context_lengths=_numbers(lengths, int, "--lengths") or base.context_lengths,
                       depths=_numbers(depths, float, "--depths") or base.depths,
                       budgets=_numbers(budgets, float, "--budgets") or base.budgets, save_budget=save_budget,
                       sink=sink, recent=recent, n_random=random_draws, seed=seed)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("scoring retrieval heads and measuring the mixed cache"):
            result, artifact = run_kv(lm, cfg, log=console.log)
        finish(result, atlas=atlas, save=save, artifact=artifact)
