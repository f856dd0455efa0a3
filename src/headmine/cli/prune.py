"""`headmine prune MODEL`: heads removed in the order of a CHG fit's irrelevance score, against random and
attribution-patching orders, measured on held-out prompts and the corpus; optionally saves the pruned
model (zeroed o_proj columns) as a plain transformers folder."""

from __future__ import annotations

from pathlib import Path

import typer

from headmine.apply.prune import PruneConfig, run_prune, save_pruned
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


def _ks(values: list[str] | None) -> tuple[float, ...] | None:
    out = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    if not out:
        return None
    try:
        return tuple(float(v) for v in out)
    except ValueError as err:
        raise InputError(f"--ks {out} are not numbers", "give fractions of all heads (0.1) or counts (5)") from err


def register(app: typer.Typer) -> None:
    @app.command(name="prune")
    @friendly_errors
    def prune_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        task: str = typer.Option("ioi", "--task", "-t", help="causal task with corrupted prompts (ioi, induction, ... or a .jsonl file)"),
        n: int = typer.Option(48, "--n", help="prompts (split into fit and held-out parts by whole groups)"),
        ks: list[str] = typer.Option(None, "--ks", help="heads to remove: fractions of all heads (< 1) or counts "
                                                        "(repeat or comma-separate; default 0.05,0.1,0.2,0.3,0.5)"),
        preset: str = typer.Option("quick", "--preset", help="CHG preset (quick, standard, paper)"),
        chg_rows: int = typer.Option(None, "--chg-rows", help="fit prompts the CHG fit uses (default: the preset's)"),
        random_draws: int = typer.Option(3, "--random-draws", help="random orders (baseline)"),
        max_drop: float = typer.Option(0.05, "--max-drop", help="largest fit-split top-1 drop of the saved k"),
        corpus: int = typer.Option(8, "--corpus-windows", help="corpus windows for the loss (0 = skip)"),
        model_out: Path = typer.Option(None, "--save-model", help="save the model pruned at the chosen k to this folder "
                                                                  "(loads with AutoModelForCausalLM.from_pretrained)"),
        atlas: AtlasPath = None, save: SavePath = None, seed: Seed = 0,
        batch_size: int = typer.Option(16, "--batch-size"),
    ) -> None:
        """Prune MODEL's heads in CHG irrelevance order (Nam et al. 2025), tested on held-out prompts."""
        check_atlas(atlas)
        base = PruneConfig()
        cfg = PruneConfig(task=task, n=n, ks=_ks(ks) or base.ks, chg_preset=preset, chg_rows=chg_rows,
                          n_random=random_draws, max_drop=max_drop, corpus_n=corpus, batch_size=batch_size, seed=seed)
        if model_out is not None and not model_out.parent.exists():
            raise InputError(f"cannot save the pruned model: folder {model_out.parent} does not exist", "create it first")
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("pruning"):
            run = run_prune(lm, cfg, log=console.log)
        finish(run.result, atlas=atlas, save=save, artifact=run.artifact)
        if model_out is not None:
            out = save_pruned(lm, run.artifact.heads, model_out)
            console.print(f"saved the model with {len(run.artifact.heads)} heads removed to {out}")
