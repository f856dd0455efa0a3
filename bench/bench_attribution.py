"""Attribution patching cost in forward-pass equivalents on SmolLM2 (IOI): one plain forward of the
clean batch is the unit; attribution = corrupted forward + clean forward/backward.

    python bench/bench_attribution.py --n 8 [--ig-steps 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.methods import get_method
from headmine.models.loading import load_model
from headmine.pipeline.causal import prepare_inputs


def best_of(fn, k: int = 3) -> float:
    times = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--ig-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    method = get_method("attribution")
    inp = prepare_inputs(lm, method, method.config(task="ioi", n=args.n))
    a = (lm, inp.clean_ids, inp.clean_mask, inp.corrupted_ids, inp.corrupted_mask, inp.metric)
    with torch.no_grad():
        fwd = best_of(lambda: lm.forward(inp.clean_ids, inp.clean_mask))
    attr = best_of(lambda: attribution_patching(*a))
    ig = best_of(lambda: attribution_patching(*a, ig_steps=args.ig_steps), k=1)
    print(json.dumps({"forward_s": fwd, "attribution_s": attr, "attribution_forward_equivalents": attr / fwd,
                      f"ig{args.ig_steps}_s": ig, f"ig{args.ig_steps}_forward_equivalents": ig / fwd}, indent=1))


if __name__ == "__main__":
    main()
