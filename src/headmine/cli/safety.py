"""`headmine safety MODEL`: safety heads (SHIPS per head, Sahara group search) on fit requests; held-out
Ships, refusal rates and corpus cost of ablating the group, against random groups of the same size."""

from __future__ import annotations

import typer

from headmine.apply.safety import SafetyConfig, run_safety
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
    @app.command(name="safety")
    @friendly_errors
    def safety_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        eps: float = typer.Option(1e-5, "--eps", help="query scale of an ablated head (Undifferentiated Attention)"),
        n_scan: int = typer.Option(8, "--n-scan", help="fit requests in the per-head Ships scan"),
        candidates: int = typer.Option(8, "--candidates", help="heads (largest single-head angle) Sahara searches"),
        steps: int = typer.Option(3, "--steps", help="Sahara group size"),
        random_draws: int = typer.Option(5, "--random-draws", help="random groups of the same size (baseline)"),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="generated tokens per reply (refusal rate)"),
        min_refusal: float = typer.Option(0.25, "--min-refusal",
                                          help="intact refusal rate below which ablated generations are skipped"),
        atlas: AtlasPath = None, save: SavePath = None, seed: Seed = 0,
    ) -> None:
        """Safety heads (Zhou et al. 2025, SHIPS / Sahara) on MODEL, tested on held-out requests."""
        check_atlas(atlas)
        cfg = SafetyConfig(eps=eps, n_scan=n_scan, candidates=candidates, steps=steps, n_random=random_draws,
                           max_new_tokens=max_new_tokens, min_refusal=min_refusal, seed=seed)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("scanning Ships, searching a Sahara group and evaluating it"):
            result, artifact = run_safety(lm, cfg, log=console.log)
        finish(result, atlas=atlas, save=save, artifact=artifact)
