"""What the application commands (``steer``, ``fv``, ``safety``, ``inject``, ``kv``, ``prune``) share:
their common options, the before/after tables printed the same way, the atlas write and the artifact save."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from headmine.apply import ApplyResult, HeadArtifact
from headmine.atlas import write_job
from headmine.cli.common import console

SavePath = Annotated[Path | None, typer.Option(
    "--save", help="save the artifact here (<stem>.json + <stem>.safetensors; apply it with headmine.apply.applied)")]
Seed = Annotated[int, typer.Option("--seed", help="seed of the fit/held-out split and of the random-head draws")]


def _num(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _ci(lo: Any, hi: Any, signed: bool = False) -> str:
    return "" if lo is None else f" [{_num(lo, signed)}, {_num(hi, signed)}]"


def print_result(result: ApplyResult) -> None:
    """The chosen heads and parameters, every before/after table and the notes."""
    console.print(f"[bold]{escape(result.title)}[/] ({escape(result.paper)}) on {escape(result.model)}")
    if result.heads:
        console.print(f"heads ({len(result.heads)}): " + ", ".join(str(h) for h in result.heads))
    if result.chosen:
        console.print("chosen on the fit split: " + "; ".join(f"{escape(str(k))} = {escape(str(v))}"
                                                              for k, v in result.chosen.items()))
    for name, rows in result.tables.items():
        t = Table(title=escape(name))
        for col in ("split", "condition", "metric", "n", "value [95% CI]", "change [95% CI]", ""):
            t.add_column(col)
        for r in rows:
            change, sig = "", ""
            if r.get("delta") is not None:
                lo, hi = r["delta_ci"]
                change = _num(r["delta"], True) + _ci(lo, hi, True)
                sig = "significant" if r.get("significant") else "[yellow]not significant[/]"
            lo, hi = r.get("ci", [None, None])
            t.add_row(escape(str(r["split"])), escape(str(r["condition"])), escape(str(r["metric"])), str(r.get("n", "")),
                      _num(r.get("value")) + _ci(lo, hi), change, sig)
        console.print(t)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def finish(result: ApplyResult, *, atlas: Path | None, save: Path | None, artifact: HeadArtifact | None) -> None:
    """Print the result, save the artifact and write the atlas run (each only when asked)."""
    print_result(result)
    if save is not None:
        if artifact is None:
            console.print("[yellow]nothing to save: the run chose no edit[/]")
        else:
            js, st = artifact.save(save)
            console.print(f"saved the {result.kind} artifact to {js} and {st}")
    if atlas is not None:
        run_id = write_job(result, atlas)
        console.print(f"atlas: run {run_id} ({result.kind}) in {atlas}")
    console.print(f"[dim]{result.duration_s:.0f} s[/]")
