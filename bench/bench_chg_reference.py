"""The long CHG reference fit (issue 10 section 5): the paper's schedule on SmolLM2 IOI, run once on the CPU.

Paper appendix 6.2 schedule: 3 x 500 updates, lr 0.1 -> 0.01 (lam = 0) then 0.5 -> 0.1 (G+, G-), with a
smaller batch and fewer seeds than the paper's 64 / 10 (a CPU budget; the issue allows it). The same
data as ``headmine gate smollm2 --task ioi`` (64 prompts, seed 0). Writes one ``chg`` run into an atlas,
the gates (G, G_plus, G_minus [K, L, H]) to a safetensors file for the budget comparison in
``bench_chg_convergence.py``, and the convergence verdict + timings to a JSON file.

Usage: nice -n 5 python bench/bench_chg_reference.py [--out /work/cmp/chg_ref] [--seeds 3] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from headmine.atlas import write_job
from headmine.causal.head_gating import CHGConfig, task_data
from headmine.models.loading import load_model
from headmine.pipeline.gating import gate_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", default="ioi")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--updates", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="/work/cmp/chg_ref")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    data, prompts = task_data(lm, args.task, n=args.n, seed=0)
    cfg = CHGConfig.preset_for("paper", seeds=args.seeds, batch_size=args.batch, micro_batch=args.batch * args.seeds,
                               updates=(args.updates,) * 3)
    t0 = time.perf_counter()
    last = [t0]

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or step % 25 == 0 or now - last[0] > 120:
            last[0] = now
            print(f"{now - t0:8.1f}s {stage} {step}/{total} loss {loss:.4f}", flush=True)

    report = gate_model(lm, data, cfg, task=args.task, prompts=prompts, progress=progress)
    wall = time.perf_counter() - t0
    res = report.result
    save_file({"G": res.G.contiguous(), "G_plus": res.G_plus.contiguous(), "G_minus": res.G_minus.contiguous()},
              str(out) + ".safetensors", metadata={"config": json.dumps(cfg.to_dict())})
    run_id = write_job(report, str(out) + ".db")
    summary = {"wall_s": wall, "fit_s": res.duration_s, "threads": args.threads, "run_id": run_id,
               "config": cfg.to_dict(), "shares": res.shares(), "seed_agreement": res.seed_agreement(),
               "convergence": res.convergence.to_dict() if res.convergence else None,
               "ablation": {k: v.tolist() for k, v in report.ablation.items()}, "ks": list(report.ks),
               "agreement": report.agreement}
    Path(str(out) + ".json").write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps({k: summary[k] for k in ("wall_s", "shares", "seed_agreement")}, indent=1), flush=True)
    print("verdict:", res.convergence.verdict if res.convergence else None, file=sys.stderr)


if __name__ == "__main__":
    main()
