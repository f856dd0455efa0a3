"""`headmine fv MODEL`: function-vector heads (Todd et al. 2024): per-head average indirect effect on the
shipped in-context tasks, the function vector of the top heads, and held-out zero-shot accuracy with the
vector added at a layer chosen on the fit split, against random heads and no vector."""

from __future__ import annotations

import typer

from headmine.apply.fv_run import TASKS, FVConfig, run_fv
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


def _tasks(values: list[str] | None) -> tuple[str, ...]:
    out = [v.strip() for item in values or [] for v in item.split(",") if v.strip()]
    return tuple(out) or TASKS


def register(app: typer.Typer) -> None:
    @app.command(name="fv")
    @friendly_errors
    def fv_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        task: list[str] = typer.Option(None, "--task", "-t", help=f"built-in tasks ({', '.join(TASKS)}) or TSV files "
                                                                  "of 'input<TAB>output' pairs (repeat or comma-separate); default all built-ins"),
        shots: int = typer.Option(10, "--shots", help="demonstrations per in-context prompt (fewer if the context is short)"),
        n_fit: int = typer.Option(16, "--n-fit", help="fit queries per task (means, indirect effects, layer choice)"),
        n_eval: int = typer.Option(32, "--n-eval", help="held-out queries per task"),
        trials: int = typer.Option(5, "--trials", help="corrupted (shuffled-label) prompts per task for the indirect effects"),
        top_heads: int = typer.Option(None, "--top-heads", help="heads in the function vector (default 10/448 of all heads)"),
        layer: int = typer.Option(None, "--layer", help="add the vector after this layer (default: chosen on the fit split)"),
        random_draws: int = typer.Option(5, "--random-draws", help="random head sets of the same size (baseline)"),
        min_icl: float = typer.Option(0.3, "--min-icl", help="held-out clean ICL top-1 below which a task gets no vector"),
        shuffled: bool = typer.Option(True, "--shuffled/--no-shuffled", help="also measure shuffled-label ICL + FV"),
        corpus: int = typer.Option(8, "--corpus-windows", help="corpus windows for the cost (0 = skip)"),
        atlas: AtlasPath = None, save: SavePath = None, seed: Seed = 0,
        batch_size: int = typer.Option(8, "--batch-size"),
    ) -> None:
        """Function vectors (Todd et al. 2024) on MODEL: heads by indirect effect, tested on held-out queries."""
        check_atlas(atlas)
        cfg = FVConfig(tasks=_tasks(task), shots=shots, n_fit=n_fit, n_eval=n_eval, n_trials=trials, top_heads=top_heads,
                       layer=layer, n_random=random_draws, min_icl=min_icl, shuffled=shuffled, corpus_windows=corpus,
                       seed=seed, batch_size=batch_size)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("fitting function vectors"):
            result, artifact = run_fv(lm, cfg, log=console.log)
        finish(result, atlas=atlas, save=save, artifact=artifact)
