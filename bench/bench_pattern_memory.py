"""Peak memory and time of the pattern captures of the induction, retrieval and sink detectors on SmolLM2
(CPU) at 1K-8K tokens: patterns recomputed from q,k under SDPA vs eager attention.

    python bench/bench_pattern_memory.py [--lengths 1024 2048 4096 8192] [--modes recompute eager legacy]

Every (mode, length, detector) runs in a fresh subprocess (torch allocations are invisible to
tracemalloc, so the peak is the process's ``ru_maxrss``), which loads the model, builds the detector's
probe at that length (one sequence) and runs the scan's capture pass for it (``run_plan``: the same
code as ``headmine scan``), scoring included. Reported: the peak RSS, the RSS after loading (the model),
their difference (what the capture added) and the pass's wall time.

Modes:
- ``recompute``: model loaded with SDPA; patterns recomputed from q and k (``pattern_source`` says so).
- ``eager``: model loaded with eager attention; the same pass (layer-streamed, sampled rows), so the
  difference is the eager kernel's full ``[heads, T, T]`` weights per layer.
- ``legacy``: eager, and the pass as it was before the recompute: every layer's all-rows pattern stored
  in one record, then scored (30 x 9 x T^2 floats: run only at short lengths).

Probes: induction = BOS + r + r with |r| = T/2 - 1 (all rows; beyond 512 tokens, 512 evenly spaced rows);
sink = natural text of T tokens (the embedded corpus is ~4.4K tokens: cycled for longer windows);
retrieval = one needle prompt of ~T tokens (depth 0.5), ONE greedy decoding step (the last row of every
layer); a scan decodes ``max_new_tokens`` such steps, each costing this. Its best score is nan: one
step cannot produce the 5-token answer, and the score counts retrieved prompts only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "pattern_memory.md"
DETECTORS = ("induction", "attention_sink", "retrieval")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one(mode: str, length: int, detector: str) -> dict:
    """Run one configuration in this process and return its measurements."""
    import torch

    import headmine.pipeline.capture_plans as plans
    from headmine.capture import CaptureSpec, run_capture
    from headmine.core.ids import Site
    from headmine.detectors import ScoreAccumulator, get_detector
    from headmine.models.loading import load_model
    from headmine.pipeline.capture_plans import PassContext, run_plan
    from headmine.tasks import PROBES, load_probe
    from headmine.tasks.corpus import corpus_text

    torch.set_num_threads(2)
    lm = load_model("smollm2", attn_implementation="sdpa" if mode == "recompute" else "eager")
    det = get_detector(detector)
    task = PROBES.get(det.task)
    if detector == "induction":
        probe = load_probe("repeated_tokens", lm.tokenizer, n=1, seed=0, seq_len=length // 2 - 1)
    elif detector == "attention_sink":
        text = corpus_text() * (1 + length // 4000)
        probe = load_probe("natural_text", lm.tokenizer, n=1, seed=0, seq_len=length - 1, text=text)
    else:
        probe = load_probe("needle", lm.tokenizer, n=1, seed=0, context_lengths=(length - 16,), depths=(0.5,))
    n_tokens = int(probe.input_ids.shape[1])
    g = lm.geometry
    ctx = PassContext(lm=lm, detectors=[det], accumulators={det.name: ScoreAccumulator()}, weights=None,
                      base_meta={"n_layers": g.n_layers, "n_heads": g.n_heads}, stage=det.task)
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "legacy":
        record = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN}), keep_logits=False), probe.input_ids,
                             probe.attention_mask)
        ctx.score(record, {**probe.meta, **ctx.base_meta})
        source = record.pattern_source
        del record
    else:
        plans.MAX_QUERY_ROWS = 512
        run_plan(ctx, task.plan, probe, batch_size=1, max_new_tokens=1)
        source = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN}), layers=(0,), query_positions="last",
                                             keep_logits=False), probe.input_ids[:, :8]).pattern_source
    seconds = time.perf_counter() - t0
    mean = ctx.accumulators[det.name].mean_stderr()[0]
    return {"mode": mode, "length": length, "detector": detector, "n_tokens": n_tokens, "seconds": round(seconds, 2),
            "rss_base_mb": round(base), "rss_peak_mb": round(_rss_mb()), "added_mb": round(_rss_mb() - base),
            "pattern_source": source, "best_score": None if np.isnan(mean).all() else float(np.nanmax(mean))}


def table(rows: list[dict]) -> str:
    head = ("| detector | tokens | mode | pattern source | peak RSS (MB) | added by capture (MB) | time (s) | best score |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in sorted(rows, key=lambda r: (DETECTORS.index(r["detector"]), r["length"], r["mode"])):
        if "error" in r:
            lines.append(f"| {r['detector']} | {r['length']} | {r['mode']} | - | failed: {r['error']} | | | |")
            continue
        best = "nan" if r["best_score"] is None else f"{r['best_score']:.3f}"
        lines.append(f"| {r['detector']} | {r['n_tokens']} | {r['mode']} | {r['pattern_source']} | {r['rss_peak_mb']} "
                     f"| {r['added_mb']} | {r['seconds']} | {best} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--modes", nargs="+", default=["recompute", "eager", "legacy"])
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    ap.add_argument("--legacy-max", type=int, default=2048, help="longest length the legacy mode runs at")
    ap.add_argument("--one", nargs=3, metavar=("MODE", "LENGTH", "DETECTOR"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2])))
        return
    rows = []
    for length in args.lengths:
        for detector in args.detectors:
            for mode in args.modes:
                if mode == "legacy" and (length > args.legacy_max or detector == "retrieval"):
                    continue  # legacy retrieval = eager: its plan already captures the last row only
                proc = subprocess.run([sys.executable, __file__, "--one", mode, str(length), detector],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    row = {"mode": mode, "length": length, "detector": detector,
                           "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
                else:
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Pattern capture memory and time (SmolLM2, CPU, 2 threads)\n\n"
                        "Produced by `bench/bench_pattern_memory.py` (its docstring says what each mode and probe is).\n\n"
                        + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
