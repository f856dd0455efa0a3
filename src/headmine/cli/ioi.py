"""`headmine ioi MODEL`: the IOI circuit role by role (Wang et al. 2022): name movers, negative and backup name
movers, S-inhibition, induction, duplicate-token and previous-token heads, each found by the path-patching
test that defines its class on fit prompts; the circuit's faithfulness on held-out prompts."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from headmine.atlas import write_job
from headmine.causal.ioi_roles import ROLE_TYPES, IOIRolesConfig
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
from headmine.pipeline.ioi_circuit import IOICircuitResult, run_ioi_circuit


def _f(x: object, signed: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def print_result(result: IOICircuitResult) -> None:
    """Roles with their heads and the defining effect, tests vs random heads, faithfulness, notes."""
    s = result.summary
    console.print(f"[bold]IOI circuit[/] on {escape(result.model)}: logit difference {s['ld_fit']:.3f} (fit), "
                  f"{s['ld_heldout']:.3f} (held-out)")
    t = Table(title="roles (defining test on fit prompts; effect = relative change of the logit difference)")
    for col in ("role", "survey type", "heads (effect)", "vs random heads (held-out ΔLD [95% CI])"):
        t.add_column(col)
    by_role: dict[str, list[str]] = {}
    for h in s["heads"]:
        by_role.setdefault(h["role"], []).append(f"{h['head']} ({_f(h['effect'], True)})")
    for role, typ in ROLE_TYPES.items():
        vr = s["vs_random"].get(role) or {}
        cmp = "" if not vr else (f"{_f(vr['delta_ld'], True)} [{_f(vr['delta_ld_ci'][0], True)}, {_f(vr['delta_ld_ci'][1], True)}]"
                                 f" vs random {_f(vr['random_mean'], True)}: "
                                 + ("beats random" if vr["beats_random"] else "[yellow]not above random[/]"))
        t.add_row(role, typ, escape(", ".join(by_role.get(role, [])) or "none found"), cmp)
    de = s["vs_random"].get("direct_effect") or {}
    t.add_row("direct effect (DLA)", "Direct-Effect Head", escape(", ".join(s["direct_effect_heads"]) or "none found"),
              "" if not de else f"sum |DLA| {_f(de['sum_abs_dla'])} vs random {_f(de['random_mean'])}: "
              + ("beats random" if de["beats_random"] else "[yellow]not above random[/]"))
    console.print(t)
    f = s["faithfulness"]
    console.print(f"faithfulness F(C)/F(M) on {f['n_prompts']} held-out prompts: {_f(f['faithfulness'])} "
                  f"[{_f(f['faithfulness_ci'][0])}, {_f(f['faithfulness_ci'][1])}] with {f['n_circuit_heads']} heads; "
                  f"empty circuit {_f(f['empty_faithfulness'])}; random circuits of the same size: mean "
                  f"{_f(f['random_circuits']['mean'])}, max {_f(f['random_circuits']['max'])}")
    console.print("thresholds: " + ", ".join(f"{k} {_f(v)}" for k, v in s["thresholds"].items()))
    for note in s["notes"]:
        console.print(f"[yellow]note:[/] {escape(note)}")


def register(app: typer.Typer) -> None:
    @app.command(name="ioi")
    @friendly_errors
    def ioi_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        n_fit: int = typer.Option(32, "--n-fit", help="IOI prompts the roles are chosen on"),
        n_heldout: int = typer.Option(32, "--n-heldout", help="held-out IOI prompts (random-head tests, faithfulness)"),
        floor: float = typer.Option(0.02, "--floor", help="least relative change of the logit difference a role head needs"),
        copy_min: float = typer.Option(0.5, "--copy-min", help="least (negative) copy score of a name mover"),
        max_per_role: int = typer.Option(8, "--max-per-role", help="at most this many heads per role"),
        random_draws: int = typer.Option(30, "--random-draws", help="random head groups per role (baseline)"),
        seed: int = typer.Option(0, "--seed", help="seed of the fit prompts (held-out: seed + 1) and of the draws"),
        atlas: AtlasPath = None,
    ) -> None:
        """The IOI circuit of MODEL, role by role, with each role's defining test and the circuit's faithfulness."""
        check_atlas(atlas)
        cfg = IOIRolesConfig(n_fit=n_fit, n_heldout=n_heldout, floor=floor, copy_min=copy_min,
                             max_per_role=max_per_role, n_random=random_draws, seed=seed)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        with console.status("classifying IOI roles"):
            result = run_ioi_circuit(lm, cfg, log=console.log)
        print_result(result)
        if atlas is not None:
            run_id = write_job(result, atlas)
            console.print(f"atlas: run {run_id} (ioi_circuit) in {atlas}")
        console.print(f"[dim]{result.result.duration_s:.0f} s[/]")
