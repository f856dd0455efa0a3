"""`headmine mine`: the main job. Scan -> causal checks -> causal toolkit on IOI -> quick CHG ->
factual recall -> report, all into one atlas, resumable.

Each stage writes one atlas run tagged with the session's ``group_id``. The group id is derived
from the model's file hash and the budget, so running the same command again resumes: stages whose
run is already in the atlas are skipped. ``fresh=True`` starts a new session.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headmine.atlas import Atlas, write_job
from headmine.causal.head_gating import CHGConfig, task_data
from headmine.causal.methods import get_method
from headmine.core.errors import InputError, TaskError
from headmine.models.loading import LoadedModel
from headmine.pipeline.attention_examples import method_top_views
from headmine.pipeline.causal import run_causal
from headmine.pipeline.factual import FactualConfig, run_factual
from headmine.pipeline.gating import gate_model
from headmine.pipeline.scan import ScanConfig, scan_model
from headmine.tasks import load_task

#: progress(stage, done, total): the stage's own progress, as the pipelines report it.
StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How thorough `mine` is. Sizes are prompts per task unless named otherwise."""

    name: str
    scan_batch: int
    scan_probe_n: int
    causal_n: int
    toolkit_n: int
    chg_preset: str
    chg_seeds: int
    chg_n: int
    chg_tasks: tuple[str, ...]
    factual_n: int
    factual_shots: int


BUDGETS: dict[str, Budget] = {
    "quick": Budget(name="quick", scan_batch=8, scan_probe_n=8, causal_n=8, toolkit_n=16, chg_preset="quick",
                    chg_seeds=2, chg_n=8, chg_tasks=("ioi",), factual_n=8, factual_shots=0),
    "standard": Budget(name="standard", scan_batch=8, scan_probe_n=16, causal_n=16, toolkit_n=32, chg_preset="standard",
                       chg_seeds=2, chg_n=16, chg_tasks=("ioi", "induction"), factual_n=16, factual_shots=3),
    "thorough": Budget(name="thorough", scan_batch=8, scan_probe_n=32, causal_n=32, toolkit_n=64, chg_preset="paper",
                       chg_seeds=4, chg_n=64, chg_tasks=("ioi", "induction", "factual"), factual_n=32, factual_shots=3),
}


@dataclass(frozen=True)
class Stage:
    """One step of the main job: ``kind``/``task`` identify its atlas run (for resuming)."""

    name: str
    kind: str
    task: str | None
    cost: float  # rough cost in plain-forward-pass units, for the time estimate
    run: Callable[[LoadedModel, Budget, str, str, StageProgress], int]


@dataclass
class MineResult:
    model: str
    atlas: Path
    group_id: str
    run_ids: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    notes: list[str] = field(default_factory=list)


def group_id_for(lm: LoadedModel, budget: Budget, *, fresh: bool = False) -> str:
    base = f"{lm.name}|{lm.provenance.file_hash}|{budget.name}"
    if lm.provenance.dtype != "float32":  # bf16 numbers differ from float32 ones: never resume one from the other
        base += f"|{lm.provenance.dtype}"
    if fresh:
        base += f"|{time.time_ns()}"
    return "mine-" + hashlib.sha256(base.encode()).hexdigest()[:16]


# ---- stages -----------------------------------------------------------------------------------
def _scan(lm: LoadedModel, budget: Budget, atlas: str, gid: str, progress: StageProgress) -> int:
    config = ScanConfig(batch_size=budget.scan_batch, causal_n=budget.causal_n)
    result = scan_model(lm, config, progress=progress)
    return write_job(result, atlas, group_id=gid)


def _toolkit(method: str, task: str, **extra: Any) -> Callable[[LoadedModel, Budget, str, str, StageProgress], int]:
    def run(lm: LoadedModel, budget: Budget, atlas: str, gid: str, progress: StageProgress) -> int:
        progress(method, 0, 1)
        result = run_causal(lm, get_method(method).config(task=task, n=budget.toolkit_n, **extra))
        progress(method, 1, 1)
        return write_job(result, atlas, group_id=gid)

    return run


def _chg(task: str) -> Callable[[LoadedModel, Budget, str, str, StageProgress], int]:
    def run(lm: LoadedModel, budget: Budget, atlas: str, gid: str, progress: StageProgress) -> int:
        data, prompts = task_data(lm, task, n=budget.chg_n, seed=0)
        config = CHGConfig.preset_for(budget.chg_preset, seeds=budget.chg_seeds)
        report = gate_model(lm, data, config, task=task, prompts=prompts,
                            progress=lambda stage, step, total, loss: progress(f"CHG {stage}", step, total))
        return write_job(report, atlas, group_id=gid)

    return run


def _factual(lm: LoadedModel, budget: Budget, atlas: str, gid: str, progress: StageProgress) -> int:
    progress("factual", 0, 1)
    report = run_factual(lm, FactualConfig(n_per_relation=budget.factual_n, shots=budget.factual_shots),
                         log=lambda stage, *_: progress(f"factual: {stage}", 0, 1))
    progress("factual", 1, 1)
    return write_job(report, atlas, group_id=gid)


def _attention(lm: LoadedModel, budget: Budget, atlas: str, gid: str, progress: StageProgress) -> int:
    progress("attention examples", 0, 1)
    views = method_top_views(lm, atlas, gid)
    progress("attention examples", 1, 1)
    return write_job(views, atlas, group_id=gid)


def toolkit_task(lm: LoadedModel) -> str:
    """IOI where the tokenizer has single-token names; else in-context repetition (e.g. toy vocabularies)."""
    try:
        load_task("ioi", lm.tokenizer, n=2, seed=0)
    except TaskError:
        return "induction"
    return "ioi"


def stage_costs(n_layers: int, n_heads: int, budget: Budget) -> dict[str, float]:
    """Each stage kind's cost in plain forwards of 8 x 64 tokens (``forward_seconds``); ``chg`` is per task.

    Fitted to `mine --budget quick` on SmolLM2 (bench/bench_stage_costs.py, quiet run of 2026-12-03: 548 s;
    bench/results/stage_costs.md; the scan grew with the detectors added since the first fit) and scaled by
    what each stage's work grows with: layers, heads, prompts, CHG updates x seeds x rows. The time estimate and bench/project_scale.py both use it.
    """
    heads, n_tool = n_layers * n_heads, budget.toolkit_n
    chg = CHGConfig.preset_for(budget.chg_preset)  # updates x (forward + backward) x seeds x rows
    return {
        "scan": (51 + 6.4 * n_layers) * budget.scan_probe_n / 8,
        "ablation": 0.0145 * heads * n_tool,
        "patching": 0.0148 * heads * n_tool,
        "attribution": 0.14 * n_tool,
        "dla": 0.045 * n_tool,
        "chg": sum(chg.updates) * budget.chg_seeds * min(chg.batch_size, budget.chg_n) / 8,
        "factual": (15.4 + 0.138 * heads) * budget.factual_n / 8,
        "attention": 2.3,
    }


def stages_for(lm: LoadedModel, budget: Budget) -> list[Stage]:
    """The job's stages for this model (decoder-only stages are left out for encoders)."""
    g = lm.geometry
    cost = stage_costs(g.n_layers, g.n_heads, budget)
    out = [Stage("scan + causal checks", "scan", None, cost["scan"], _scan)]
    if not lm.adapter.is_causal:
        return out
    task = toolkit_task(lm)
    out += [
        Stage(f"ablation sweep ({task})", "ablation", task, cost["ablation"], _toolkit("ablation", task, mode="mean")),
        Stage(f"activation patching ({task})", "patching", task, cost["patching"], _toolkit("patching", task)),
        Stage(f"attribution patching ({task})", "attribution", task, cost["attribution"], _toolkit("attribution", task)),
        Stage(f"direct logit attribution ({task})", "dla", task, cost["dla"], _toolkit("dla", task)),
    ]
    chg_tasks = dict.fromkeys(t if t != "ioi" else task for t in budget.chg_tasks)
    out += [Stage(f"causal head gating ({t})", "chg", t, cost["chg"], _chg(t)) for t in chg_tasks]
    out.append(Stage("factual recall", "factual", None, cost["factual"], _factual))
    out.append(Stage("attention examples of every method's top heads", "attention", None, cost["attention"], _attention))
    return out


def completed_stages(atlas_path: str | Path, group_id: str) -> set[tuple[str, str | None]]:
    """(kind, task) pairs already written by this session."""
    if not Path(atlas_path).exists():
        return set()
    with Atlas.open(atlas_path, create=False) as db:
        runs = db.runs(group_id=group_id)
    return {(r.kind, r.task if isinstance(r.task, str) else None) for r in runs.itertuples()}


def _done(stage: Stage, completed: set[tuple[str, str | None]]) -> bool:
    return any(kind == stage.kind and (stage.task is None or task == stage.task or (task or "").startswith(stage.task))
               for kind, task in completed)


def forward_seconds(lm: LoadedModel) -> float:
    """Wall time of one plain forward of a small batch: the unit of the time estimate."""
    ids = torch.randint(10, min(lm.geometry.vocab_size, 1000), (8, 64), generator=torch.Generator().manual_seed(0))
    lm.forward(ids)  # warm-up
    start = time.perf_counter()
    lm.forward(ids)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Plan:
    """What `mine` will do: all stages, the ones still to run, and an estimate in seconds."""

    group_id: str
    stages: list[Stage]
    todo: list[Stage]
    estimate_s: float


def plan(lm: LoadedModel, atlas_path: str | Path, *, budget: str = "quick", fresh: bool = False) -> Plan:
    if budget not in BUDGETS:
        raise InputError(f"unknown budget {budget!r}", f"use one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    gid = group_id_for(lm, b, fresh=fresh)
    stages = stages_for(lm, b)
    completed = completed_stages(atlas_path, gid)
    todo = [s for s in stages if not _done(s, completed)]
    return Plan(gid, stages, todo, sum(s.cost for s in todo) * forward_seconds(lm))


def mine(
    lm: LoadedModel,
    atlas_path: str | Path,
    *,
    budget: str = "quick",
    fresh: bool = False,
    group_id: str | None = None,
    only: set[str] | None = None,
    on_stage: Callable[[Stage, int, int], None] | None = None,
    progress: StageProgress | None = None,
) -> MineResult:
    """Run every stage not yet in the atlas for this session; raise nothing half-written."""
    if budget not in BUDGETS:
        raise InputError(f"unknown budget {budget!r}", f"use one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    gid = group_id if group_id is not None else group_id_for(lm, b, fresh=fresh)
    result = MineResult(model=lm.name, atlas=Path(atlas_path), group_id=gid)
    completed = completed_stages(atlas_path, gid)
    stages = [s for s in stages_for(lm, b) if only is None or s.kind in only]
    for i, stage in enumerate(stages):
        if on_stage is not None:
            on_stage(stage, i, len(stages))
        if _done(stage, completed):
            result.skipped.append(stage.name)
            continue
        start = time.perf_counter()
        try:
            result.run_ids[stage.name] = stage.run(lm, b, str(atlas_path), gid, progress or (lambda *_: None))
        except TaskError as exc:  # e.g. IOI names are not single tokens in a toy vocabulary
            result.notes.append(f"{stage.name}: not applicable to {lm.name}: {exc.problem}")
            continue
        result.timings[stage.name] = time.perf_counter() - start
    return result
