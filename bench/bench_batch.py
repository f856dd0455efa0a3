"""What limits `headmine batch`: Ray start-up, a job's start-up on a worker, model load, and the merge.

    python bench/bench_batch.py [--jobs 6] [--cpus 2] [--merge-copies 20]

1. Ray: ``ray.init(num_cpus=CPUS)`` wall time; then a plan of JOBS tiny toy-induction scans (causal
   check off, n = 4, one seed each) and one SmolLM2 induction scan, all submitted at once as Ray tasks.
   Per job, in the order they finish: when its result arrived (seconds after the batch started), its
   model load and run time on the worker. The first CPUS results come from fresh worker processes: their
   arrival minus load and run is the start-up of a job on a new worker (process start, imports, shard
   transfer); later jobs reuse a warm worker.
2. The same plan locally (one process, one model load per model).
3. Merge: MERGE_COPIES shards, each holding one real scan run (toy-induction: a few dozen score rows;
   SmolLM2 induction scan: ~540 rows, inputs, artifacts), merged into a new atlas; seconds per run. Then
   the same shards again (all already there): the cost of the idempotency check.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import ray
from transformers.utils import logging as hf_logging

from headmine.atlas import write_job
from headmine.atlas.merge import merge_shards
from headmine.models.loading import load_model
from headmine.pipeline.batch import BatchEvent, run_batch
from headmine.pipeline.plan_file import parse_plan
from headmine.pipeline.scan import ScanConfig, probe_sizes, scan_model


def plan_text(jobs: int) -> str:
    return f"""
[defaults]
n = 4
causal = false
resources = {{ num_cpus = 1 }}
[[matrix]]
models = ["toy-induction"]
jobs = ["scan:induction,previous_token"]
seed = {list(range(jobs))}
[[jobs]]
model = "smollm2"
job = "scan:induction"
"""


def timed_batch(plan, atlas: Path, shards: Path, ray_address: str | None) -> tuple[float, dict, dict]:
    finished: dict[str, float] = {}
    start = time.perf_counter()

    def on_event(e: BatchEvent) -> None:
        if e.status in ("done", "failed"):
            finished[e.report.job.key] = time.perf_counter() - start

    result = run_batch(plan, atlas, shards, ray=ray_address, on_event=on_event)
    wall = time.perf_counter() - start
    assert result.ok, [r.errors for r in result.failed]
    rows = {r.job.key: r for r in result.jobs}
    return wall, finished, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--merge-copies", type=int, default=20)
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        plan = parse_plan(plan_text(args.jobs), tmp / "plan.toml")
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t
        wall, latency, rows = timed_batch(plan, tmp / "ray.db", tmp / "ray-shards", "auto")
        t = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - t
        print(f"Ray init ({args.cpus} CPUs): {init_s:.1f} s; shutdown {shutdown_s:.1f} s")
        print(f"Ray: {len(rows)} jobs in {wall:.1f} s (merge included)")
        print("| job (in the order results arrived) | arrived at s | load s | run s | arrival - load - run s |")
        print("|---|---|---|---|---|")
        for i, key in enumerate(sorted(latency, key=latency.get)):
            r = rows[key]
            first = " (fresh worker)" if i < args.cpus else ""
            print(f"| {r.job.label}{first} | {latency[key]:.2f} | {r.load_s:.2f} | {r.run_s:.2f} | "
                  f"{latency[key] - r.load_s - r.run_s:.2f} |")
        wall_local, _, rows_local = timed_batch(plan, tmp / "local.db", tmp / "local-shards", None)
        loads = sum(r.load_s for r in rows_local.values())
        runs = sum(r.run_s for r in rows_local.values())
        print(f"local: {len(rows_local)} jobs in {wall_local:.1f} s (model loads {loads:.1f} s, runs {runs:.1f} s)")

        for name, config in (("toy-induction", ScanConfig(detectors=("induction", "previous_token"),
                                                          probe_params=probe_sizes(4), causal=False)),
                             ("smollm2", ScanConfig(detectors=("induction",), probe_params=probe_sizes(4), causal=False))):
            lm = load_model(name)
            src = tmp / f"{name}-src.db"
            write_job(scan_model(lm, config), src)
            shards = []
            for i in range(args.merge_copies):  # distinct runs: each copy is written again (its own times)
                p = tmp / f"{name}-{i}.db"
                shutil.copy(src, p) if i == 0 else write_job(scan_model(lm, config), p)
                shards.append(p)
            size = src.stat().st_size
            t = time.perf_counter()
            report = merge_shards(shards, tmp / f"{name}-merged.db")
            merge_s = time.perf_counter() - t
            t = time.perf_counter()
            again = merge_shards(shards, tmp / f"{name}-merged.db")
            again_s = time.perf_counter() - t
            print(f"merge {name}: {report.added} runs ({size / 1024:.0f} KiB shard each) in {merge_s:.2f} s = "
                  f"{1000 * merge_s / max(1, report.added):.1f} ms/run; again (all {again.already} already there) "
                  f"{again_s:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
