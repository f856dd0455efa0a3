"""Foundation benchmark, side by side in one run on one model.

Measures (median of interleaved repeats):
- load time of the model from its GGUF file (fresh cache) vs from the safetensors cache;
- a plain eager forward vs the same forward with an all-ones Gate on every head (target < 5% overhead);
- patterns-only capture (all heads, all layers) vs the plain eager forward it rides on (target: no slower);
- a plain SDPA forward for reference, and z + result capture.

Usage: python bench/bench_foundation.py [--model smollm2] [--batch 8] [--seq 128] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal import Gate, run_with_interventions
from headmine.core.ids import Site
from headmine.models.loading import load_model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--skip-fresh-load", action="store_true")
    args = p.parse_args()

    results: dict[str, float] = {}
    if not args.skip_fresh_load:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("HEADMINE_CACHE")
            os.environ["HEADMINE_CACHE"] = tmp
            results["load_from_gguf_s"] = timed(lambda: load_model(args.model))
            results["load_from_cache_s"] = timed(lambda: load_model(args.model))
            if old is None:
                del os.environ["HEADMINE_CACHE"]
            else:
                os.environ["HEADMINE_CACHE"] = old
    lm = load_model(args.model)
    sdpa = load_model(args.model, attn_implementation="sdpa")
    g = lm.geometry
    ids = torch.randint(100, min(g.vocab_size, 20000), (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    gates = torch.ones(g.n_layers, g.n_heads)
    runs = {
        "plain_eager": lambda: lm.forward(ids, mask),
        "gate_all_ones": lambda: run_with_interventions(lm, ids, mask, [Gate(factors=gates)]),
        "capture_patterns": lambda: run_capture(lm, CaptureSpec(sites={Site.PATTERN}, keep_logits=False), ids, mask),
        "capture_z_result": lambda: run_capture(lm, CaptureSpec(sites={Site.Z, Site.RESULT}, keep_logits=False), ids, mask),
        "plain_sdpa": lambda: sdpa.forward(ids, mask),
    }
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        samples: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():  # interleaved so drift hits all alike
                samples[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["plain_eager"]
    for k, v in med.items():
        results[f"{k}_s"] = v
        results[f"{k}_vs_plain_eager"] = v / base
    results.update(model=args.model, batch=args.batch, seq=args.seq, repeats=args.repeats,
                   threads=torch.get_num_threads())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
