"""Measured cost of each `headmine mine` stage, per head, per token and per prompt (docs/SCALING.md).

Runs `mine --budget quick` on one model into a fresh temporary atlas, times each stage, and divides
by the plain-forward unit the time estimate uses (one forward of 8 x 64 tokens), by the number of
heads and by the prompts/tokens each stage processes. Writes bench/results/stage_costs.{json,md}.

    ../shared/tools/quiet -- .venv/bin/python bench/bench_stage_costs.py [--model smollm2] [--device cpu] [--dtype float32]

The projection to 8B/70B models in docs/SCALING.md uses these forward-unit ratios, which do not
depend on the hardware, times a forward's time on the target hardware.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from headmine.models.loading import load_model
from headmine.pipeline.mine import BUDGETS, forward_seconds, mine, stages_for

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--out", default=str(RESULTS / "stage_costs"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    g = lm.geometry
    unit = min(forward_seconds(lm) for _ in range(3))  # one forward of 8 x 64 tokens
    budget = BUDGETS[args.budget]
    estimated = {s.name: s.cost * unit for s in stages_for(lm, budget)}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = mine(lm, Path(tmp) / "atlas.db", budget=args.budget, fresh=True)
        wall = time.perf_counter() - start
    heads = g.n_layers * g.n_heads
    rows = []
    for name, seconds in result.timings.items():
        rows.append({"stage": name, "seconds": round(seconds, 2), "forward_units": round(seconds / unit, 1),
                     "ms_per_head": round(1000 * seconds / heads, 1), "estimated_s": round(estimated.get(name, float("nan")), 1)})
    out = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "budget": args.budget,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads", "torch": torch.__version__,
        "geometry": {"n_layers": g.n_layers, "n_heads": g.n_heads, "d_model": g.d_model},
        "load_s": round(load_s, 1), "forward_unit_s": round(unit, 4),
        "forward_ms_per_token": round(1000 * unit / (8 * 64), 3), "mine_wall_s": round(wall, 1),
        "estimate_s": round(sum(estimated.values()), 1), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "stages": rows, "notes": result.notes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    lines = [f"# mine --budget {args.budget} on {args.model} ({args.device}, {args.dtype}): stage costs", "",
             f"{out['machine']}, torch {out['torch']}; model load {out['load_s']} s; forward unit (8 x 64 tokens) "
             f"{out['forward_unit_s']} s = {out['forward_ms_per_token']} ms/token; mine wall {out['mine_wall_s']} s "
             f"(estimate {out['estimate_s']} s); peak RSS {out['peak_rss_gib']} GiB", "",
             "| stage | seconds | forward units | ms per head | estimated s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['seconds']} | {r['forward_units']} | {r['ms_per_head']} | {r['estimated_s']} |" for r in rows]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
