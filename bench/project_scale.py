"""Project `headmine mine` to 8B and 70B models from the stages measured on SmolLM2 (docs/SCALING.md).

Input: bench/results/stage_costs.json (bench_stage_costs.py: each stage's seconds and forward units,
one forward = 8 x 64 tokens). Each stage's forward units are scaled to the target model and budget by
the ratio of `pipeline.mine.stage_costs` (the time estimate's own cost model: layers, heads, prompts,
CHG updates x seeds x rows) between the target and the measured run; a budget that gates more tasks
than the measured one adds as many CHG stages.
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

from headmine.pipeline.mine import BUDGETS, stage_costs

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    name: str
    params: float
    n_layers: int
    n_heads: int


SHAPES = [Shape("SmolLM2-135M", 1.35e8, 30, 9), Shape("Llama-3-8B", 8.0e9, 32, 32), Shape("Llama-3-70B", 7.06e10, 80, 64)]


#: stage name (as mine prints it) -> stage kind (``stage_costs`` key)
KIND_OF = {"scan": "scan", "ablation": "ablation", "activation patching": "patching", "attribution": "attribution",
           "direct logit": "dla", "causal head gating": "chg", "factual": "factual", "attention": "attention"}


def kind_of(stage: str) -> str:
    return next(kind for prefix, kind in KIND_OF.items() if stage.startswith(prefix))


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
            target, base_cost = stage_costs(shape.n_layers, shape.n_heads, budget), stage_costs(base.n_layers, base.n_heads, measured)
            per_stage = {r["stage"]: r["forward_units"] * target[kind_of(r["stage"])] / base_cost[kind_of(r["stage"])]
                         for r in costs["stages"]}
            chg = [s for s in per_stage if kind_of(s) == "chg"]
            if chg and len(budget.chg_tasks) > len(measured.chg_tasks):  # e.g. standard gates induction too
                per_stage["causal head gating (further tasks)"] = (
                    sum(per_stage[s] for s in chg) / len(chg) * (len(budget.chg_tasks) - len(measured.chg_tasks)))
            total = sum(per_stage.values())
            top = max(per_stage, key=per_stage.__getitem__)
            lines.append(f"| {shape.name} | {name} | {total:,.0f} | {unit_s * 1000:.0f} ms | {total * unit_s / 3600:.2f} | "
                         f"{top} ({100 * per_stage[top] / total:.0f}%) |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
