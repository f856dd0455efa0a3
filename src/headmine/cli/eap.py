"""`headmine eap MODEL --task ioi --steps 5 --edges 50,100,...`: edge-level circuit discovery (EAP / EAP-IG).

Runs the registered ``eap`` causal method: edge scores on half the prompts, faithfulness and
completeness of the top-N circuits on the other half, the top edges checked against exact edge
patching, and the cost as a multiple of a forward + backward. ``--atlas`` stores it as one run.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from headmine.atlas import write_job
from headmine.causal.edge_attribution.method import DEFAULT_EDGES, EdgeAttributionConfig
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
from headmine.pipeline.causal import run_causal

TASK_HELP = "a causal task with corrupted prompts of the same length (ioi, ...) or a JSONL file"


def _num(x: Any, fmt: str = "+.3f") -> str:
    return "-" if x is None or x != x else format(float(x), fmt)


def print_summary(summary: dict[str, Any], top: int) -> None:
    """The graph, the cost, the curves, the exact check and the top edges of one run's summary."""
    g, cost, held = summary["graph"], summary["cost"], summary["held_out"]
    name = "EAP" if summary["steps"] == 0 else f"EAP-IG ({summary['steps']} steps)"
    console.print(f"{name}: {g['senders']} senders x {g['receivers']} receivers = {g['edges']} edges "
                  f"({g['n_layers']} layers, {g['n_heads']} query heads, {g['n_kv_heads']} KV heads); "
                  f"{summary['prompts']['scored']} prompts scored, {summary['prompts']['held_out']} held out")
    console.print(f"cost: {cost['scoring_s']:.1f} s = {_num(cost['multiple'], '.1f')} x a forward+backward "
                  f"({cost['forward_backward_s']:.2f} s); buffers {cost['buffer_mb']:.0f} MB per batch of {cost['batch_size']}")
    table = Table(title=f"circuits on held-out prompts ({summary['metric']}: clean {held['clean']:.3f}, "
                        f"corrupted {held['corrupted']:.3f})")
    for col in ("edges", "kept", "circuit metric", "faithfulness", "completeness"):
        table.add_column(col, justify="right")
    for p in summary["curves"]:
        table.add_row(str(p["n"]), str(p["kept"]), _num(p["circuit"]), _num(p["faithfulness"], ".3f"),
                      _num(p["completeness"], ".3f"))
    console.print(table)
    c = summary["check"]
    console.print(f"exact edge patching on {len(c['edges'])} edges: pearson {_num(c['pearson'], '.3f')} "
                  f"(top {_num(c['pearson_top'], '.3f')}, random {_num(c['pearson_random'], '.3f')}), "
                  f"sign agreement {_num(c['sign_agreement'], '.0%')}")
    if top > 0:
        console.print("top edges by |score|: " + ", ".join(f"{e['edge']} {e['score']:+.3f}" for e in summary["top_edges"][:top]))


def register(app: typer.Typer) -> None:
    @app.command(name="eap")
    @friendly_errors
    def eap_cmd(
        model: str = typer.Argument(..., help="embedded name, .gguf file, model folder or hub id"),
        task: str = typer.Option("ioi", "--task", "-t", help=TASK_HELP),
        steps: int = typer.Option(5, "--steps", help="integrated-gradient steps (0 = plain EAP; the paper uses 5)"),
        edges: str = typer.Option(DEFAULT_EDGES, "--edges", help="circuit sizes for the curves, comma-separated"),
        n: int = typer.Option(16, "--n", help="prompts: half are scored, half held out for the curves"),
        metric: str = typer.Option(None, "--metric", help="logit_diff | logit | answer_logprob | prob (default: the task's)"),
        batch_size: int = typer.Option(8, "--batch-size", help="prompts per pass (bounds memory)"),
        check_top: int = typer.Option(10, "--check-top", help="top edges checked against exact edge patching"),
        check_random: int = typer.Option(10, "--check-random", help="random edges checked against exact edge patching"),
        top: int = typer.Option(10, "--top", help="top edges to print"),
        seed: int = typer.Option(0, "--seed", help="task and random-edge seed"),
        atlas: AtlasPath = None,
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
    ) -> None:
        """Edge-level circuit discovery with EAP / EAP-IG (Hanna et al. 2024), grouped-query attention native."""
        check_atlas(atlas)
        config = EdgeAttributionConfig(task=task, n=n, seed=seed, metric=metric, steps=steps, edges=edges,
                                       batch_size=batch_size, check_top=check_top, check_random=check_random)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status(f"eap on {task}"):
            run = run_causal(lm, config)
        print_summary(run.result.artifacts()["eap_summary"], top)
        if atlas:
            console.print(f"atlas: run {write_job(run, atlas)} written to {atlas}")
        console.print(f"[dim]{run.duration_s:.1f} s[/]")
