"""`headmine steer MODEL`: inference-time intervention (Li et al. 2023) on the shipped true/false
statements; K and alpha chosen on the fit questions, measured on the held-out ones, saved as an
artifact that applies during generation, and written to the atlas."""

from __future__ import annotations

from pathlib import Path

import typer

from headmine.apply.steer import POSITIONS, SteerConfig, load_statements, run_steer
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


def _numbers(text: str, what: str, kind: type) -> tuple:
    try:
        vals = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{what} {text!r} is not a comma-separated list of numbers", f"e.g. --{what} 4,8,16") from None
    if not vals:
        raise InputError(f"--{what} is empty", f"e.g. --{what} 4,8,16")
    return vals


def register(app: typer.Typer) -> None:
    @app.command(name="steer")
    @friendly_errors
    def steer_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        ks: str = typer.Option("4,8,16,32", "--ks", help="numbers of top heads K to try (chosen on the fit split)"),
        alphas: str = typer.Option("1,2,5,10,15", "--alphas", help="shift strengths alpha to try, in units of sigma"),
        max_cost: float = typer.Option(0.1, "--max-cost", help="largest corpus loss increase (nats/token) allowed"),
        positions: str = typer.Option("generated", "--positions",
                                      help=f"where the shift acts: {' | '.join(POSITIONS)} (see headmine.apply.steer)"),
        questions: int = typer.Option(None, "--questions", help="use this many of the 196 questions (default all)"),
        data: Path = typer.Option(None, "--data", help="a fact file (.jsonl) instead of the shipped one"),
        n_random: int = typer.Option(5, "--random", help="random head sets of the same size (baseline)"),
        atlas: AtlasPath = None, save: SavePath = None, seed: Seed = 0,
        batch_size: int = typer.Option(32, "--batch-size"),
    ) -> None:
        """Truthfulness steering (ITI): probe heads, shift the top K along the truth direction, measure on held-out facts."""
        cfg = SteerConfig(ks=_numbers(ks, "ks", int), alphas=_numbers(alphas, "alphas", float), max_cost=max_cost,
                          positions=positions, n_questions=questions, data=None if data is None else str(data),
                          n_random=n_random, batch_size=batch_size, seed=seed)
        check_atlas(atlas)
        load_statements(cfg.data)  # a bad fact file fails before the model loads
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("steering (ITI)"):
            run = run_steer(lm, cfg, log=console.log)
        finish(run.result, atlas=atlas, save=save, artifact=run.artifact)
