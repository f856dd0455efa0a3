"""Project `headmine mine` to 8B and 70B models from the stages measured on SmolLM2 (docs/SCALING.md).

Input: bench/results/stage_costs.json (bench_stage_costs.py: each stage's seconds and forward units,
one forward = 8 x 64 tokens). Each stage's forward units are scaled to the target model and budget by
the quantity its work grows with (the same rules as `pipeline.mine.stages_for`'s estimate):
- scan + causal checks: capture passes and per-detector checks, ``20 + 2.5 * n_layers``, x probe prompts;
- ablation sweep, activation patching: one partial forward per head, x heads, x toolkit prompts;
- attribution, DLA, attention examples: a few forwards/backwards, x toolkit prompts;
- CHG: updates x seeds x rows x tasks (the preset's), independent of the model;
- factual recall: ``20 + 0.18 * heads``, x facts.
A forward unit on the target costs ``2 x parameters x 512 tokens`` FLOPs at an assumed effective
throughput (``--tflops``, default 300: ~40% of an H100/H200's dense bf16 peak; measure it with
bench_scale.py on the GPU and pass it). The output is a projection, not a measurement.

    python bench/project_scale.py [--tflops 300] [--costs bench/results/stage_costs.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from headmine.causal.head_gating import CHGConfig
from headmine.pipeline.mine import BUDGETS, Budget

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    name: str
    params: float
    n_layers: int
    n_heads: int


SHAPES = [Shape("SmolLM2-135M", 1.35e8, 30, 9), Shape("Llama-3-8B", 8.0e9, 32, 32), Shape("Llama-3-70B", 7.06e10, 80, 64)]


def chg_units(budget: Budget) -> float:
    chg = CHGConfig.preset_for(budget.chg_preset)
    return sum(chg.updates) * 3 * budget.chg_seeds * min(chg.batch_size, budget.chg_n) / 8 * len(budget.chg_tasks)


def stage_factor(stage: str, shape: Shape, base: Shape, budget: Budget, measured: Budget) -> float:
    heads, base_heads = shape.n_layers * shape.n_heads, base.n_layers * base.n_heads
    toolkit = budget.toolkit_n / measured.toolkit_n
    if stage.startswith("scan"):
        return (20 + 2.5 * shape.n_layers) / (20 + 2.5 * base.n_layers) * budget.scan_probe_n / measured.scan_probe_n
    if stage.startswith(("ablation", "activation patching")):
        return heads / base_heads * toolkit
    if stage.startswith("causal head gating"):
        return chg_units(budget) / chg_units(measured) / len(measured.chg_tasks)  # per measured CHG stage
    if stage.startswith("factual"):
        return (20 + 0.18 * heads) / (20 + 0.18 * base_heads) * budget.factual_n / measured.factual_n
    return toolkit  # attribution, DLA, attention examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--costs", default=str(RESULTS / "stage_costs.json"))
    ap.add_argument("--tflops", type=float, default=300.0, help="effective bf16 TFLOP/s of the target GPU")
    args = ap.parse_args()
    costs = json.loads(Path(args.costs).read_text())
    measured = BUDGETS[costs["budget"]]
    base = SHAPES[0]
    lines = [f"Projection from {costs['model']} `mine --budget {costs['budget']}` ({costs['device']}, {costs['dtype']}, "
             f"measured {costs['mine_wall_s']} s) at {args.tflops:.0f} effective TFLOP/s:", "",
             "| model | budget | forward units | GPU time per forward unit | projected GPU-hours | largest stage |",
             "|---|---|---:|---:|---:|---|"]
    for shape in SHAPES[1:]:
        unit_s = 2 * shape.params * 512 / (args.tflops * 1e12)
        for name in ("quick", "standard"):
            budget = BUDGETS[name]
            per_stage = {r["stage"]: r["forward_units"] * stage_factor(r["stage"], shape, base, budget, measured)
                         for r in costs["stages"]}
            if len(budget.chg_tasks) > len(measured.chg_tasks):  # e.g. standard gates induction too
                chg = [s for s in per_stage if s.startswith("causal head gating")]
                extra = sum(per_stage[s] for s in chg) * (len(budget.chg_tasks) - len(measured.chg_tasks)) / max(1, len(chg))
                per_stage["causal head gating (further tasks)"] = extra
            total = sum(per_stage.values())
            top = max(per_stage, key=per_stage.__getitem__)
            lines.append(f"| {shape.name} | {name} | {total:,.0f} | {unit_s * 1000:.0f} ms | {total * unit_s / 3600:.2f} | "
                         f"{top} ({100 * per_stage[top] / total:.0f}%) |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
