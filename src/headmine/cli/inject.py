"""`headmine inject MODEL`: important heads for prompt-injection detection (Attention Tracker) from a find
set, a threshold from the fit split, and held-out AUROC against random heads and all heads."""

from __future__ import annotations

import typer

from headmine.apply.inject import InjectConfig, run_inject
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


def register(app: typer.Typer) -> None:
    @app.command(name="inject")
    @friendly_errors
    def inject_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        k: float = typer.Option(4.0, "--k", help="head rule (mu_N - k sd_N) - (mu_A + k sd_A) > 0; lowered until a head passes"),
        limit: int = typer.Option(100, "--limit", help="prompts per class taken from the 200 benign + 200 injected (0 = all)"),
        heldout: float = typer.Option(0.5, "--heldout", help="share of topics held out for evaluation"),
        random_draws: int = typer.Option(5, "--random-draws", help="random head sets of the same size (baseline)"),
        n_find: int = typer.Option(30, "--n-find", help="find-set sentences (normal + attacked each) for head finding"),
        batch_size: int = typer.Option(8, "--batch-size"),
        atlas: AtlasPath = None, save: SavePath = None, seed: Seed = 0,
    ) -> None:
        """Prompt-injection detection from attention heads (Hung et al. 2024, Attention Tracker) on MODEL."""
        check_atlas(atlas)
        cfg = InjectConfig(k=k, limit=limit or None, heldout_frac=heldout, n_random=random_draws, seed=seed, n_find=n_find,
                           batch_size=batch_size)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("finding important heads and scoring prompts"):
            result, artifact = run_inject(lm, cfg, log=console.log)
        finish(result, atlas=atlas, save=save, artifact=artifact)
