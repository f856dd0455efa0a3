"""EAP / EAP-IG on real models (IOI): cost as a multiple of a forward+backward, peak memory, curves, check.

    python bench/bench_eap.py [--models smollm2,gemma3-270m] [--n 16] [--steps 5] [--out bench/results/eap.json]

Single-threaded, timed in process CPU seconds (robust on a shared machine): one plain forward +
backward over the scored prompts (median of 3) is the unit; EAP (steps=0) and EAP-IG (steps=m) scoring
are stated as multiples of it. Peak memory: the process's resident high-water mark (VmHWM, reset
through /proc/self/clear_refs before each stage) minus the resident size before the stage. Then the
full ``eap`` method (EAP-IG, m steps): faithfulness / completeness on held-out prompts and the exact
check of 10 top + 10 random edges.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from headmine.causal.edge_attribution.method import (
    EdgeAttributionConfig,
    forward_backward_seconds,
)
from headmine.causal.edge_attribution.scores import edge_scores
from headmine.causal.methods import get_method
from headmine.models.loading import load_model
from headmine.pipeline.causal import prepare_inputs, run_causal


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def staged(fn: Any) -> tuple[float, float, Any]:
    """(CPU seconds, peak resident MB above the start, result) of ``fn()``."""
    _reset_hwm()
    base = _kb("VmRSS")
    t = time.process_time()
    out = fn()
    return time.process_time() - t, (_kb("VmHWM") - base) / 1024, out


def bench(model: str, n: int, steps: int, edges: str) -> dict[str, Any]:
    lm = load_model(model)
    config = EdgeAttributionConfig(task="ioi", n=n, steps=steps, edges=edges)
    inputs = prepare_inputs(lm, get_method("eap"), config)
    idx = torch.arange(0, n, 2)
    ids, mask, metric = inputs.clean_ids[idx], inputs.clean_mask[idx], inputs.metric.select(idx)
    assert inputs.corrupted_ids is not None and inputs.corrupted_mask is not None
    rid, rmask = inputs.corrupted_ids[idx], inputs.corrupted_mask[idx]
    unit = []
    for _ in range(3):
        s, mem_unit, _ = staged(lambda: forward_backward_seconds(lm, ids, mask, metric, config.batch_size))
        unit.append(s)
    unit_s = statistics.median(unit)
    out: dict[str, Any] = {"model": model, "tokens": int(ids.shape[1]), "scored": len(idx), "batch_size": config.batch_size,
                           "fwd_bwd_cpu_s": unit_s, "fwd_bwd_peak_mb": mem_unit}
    for m in (0, steps):
        s, mem, _ = staged(lambda m=m: edge_scores(lm, ids, mask, rid, rmask, metric, steps=m, batch_size=config.batch_size))
        out[f"steps{m}"] = {"cpu_s": s, "multiple": s / unit_s, "peak_mb": mem}
    s, mem, run = staged(lambda: run_causal(lm, config))
    summary = run.result.artifacts()["eap_summary"]
    out["method"] = {"cpu_s": s, "peak_mb": mem, "graph": summary["graph"], "held_out": summary["held_out"],
                     "curves": summary["curves"], "check": summary["check"], "cost": summary["cost"],
                     "top_edges": summary["top_edges"][:15]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,gemma3-270m")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--edges", default="10,20,50,100,200,500,1000,2000,5000")
    ap.add_argument("--out", default="bench/results/eap.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [bench(m, args.n, args.steps, args.edges) for m in args.models.split(",")]
    Path(args.out).write_text(json.dumps(results, indent=1))
    for r in results:
        print(r["model"], {k: r[k] for k in ("tokens", "fwd_bwd_cpu_s", "fwd_bwd_peak_mb")},
              {k: r[f"steps{k}"] for k in (0, args.steps)})
        for p in r["method"]["curves"]:
            print("  ", p)
        c = r["method"]["check"]
        print("   check pearson", c["pearson"], "top", c["pearson_top"], "random", c["pearson_random"], "sign", c["sign_agreement"])


if __name__ == "__main__":
    main()
