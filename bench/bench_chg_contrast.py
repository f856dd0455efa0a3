"""Does contrastive CHG keep the retain format on a held-out task? (issue 10 section 8, Nam et al. 2025 §4.4)

The paper: gates fitted to forget one format keep the other (retain accuracy drops < 10 points) while the
forget format is forgotten, on tasks the fit never saw. Built-in pair on SmolLM2: forget the instruction
format, keep the few-shot format, fitted on four word-mapping tasks, measured on the held-out task
singular_plural (what tests/integration/test_contrastive_gating.py checks). One JSON line per
configuration is appended to ``--out`` (default bench/results/chg_contrast.jsonl): token accuracy before /
after per format on the held-out task (gates of seed 0), and on the fitted tasks, CPU and wall seconds.

Usage: python bench/bench_chg_contrast.py --configs quick,quick_w3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from headmine.causal.contrastive_gating import (
    ContrastConfig,
    builtin_contrast_split,
    fit_contrastive,
    token_accuracy,
)
from headmine.models.loading import load_model

#: name -> (preset, overrides). Each fit costs minutes of CPU (prompts are 5-shot, ~100 tokens).
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "quick": ("quick", {}),
    "quick_x3": ("quick", dict(updates=72)),  # 3x the updates
    "quick_w3": ("quick", dict(retain_weight=3.0)),  # the retain term weighted 3x
    "quick_w3_x2": ("quick", dict(retain_weight=3.0, updates=48)),
}


def run(lm: Any, name: str) -> dict[str, Any]:
    preset, over = CONFIGS[name]
    split = builtin_contrast_split(lm, forget="instruction", heldout_tasks=("singular_plural",))
    cfg = ContrastConfig.preset_for(preset, **over)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit_contrastive(lm, split.retain, split.forget, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gates = res.G[0]
    acc = {}
    for label, d in (("heldout_retain", split.eval_retain), ("heldout_forget", split.eval_forget),
                     ("fit_retain", split.retain), ("fit_forget", split.forget)):
        acc[label] = (float(token_accuracy(lm, d).mean()), float(token_accuracy(lm, d, gates).mean()))
    return {"config": name, "preset": preset, "overrides": over, "status": res.status, "accuracy": acc,
            "retain_drop": acc["heldout_retain"][0] - acc["heldout_retain"][1],
            "forget_drop": acc["heldout_forget"][0] - acc["heldout_forget"][1],
            "closed_heads": int((gates < 0.5).sum()), "wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="quick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "chg_contrast.jsonl"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    for name in args.configs.split(","):
        row = run(lm, name)
        with Path(args.out).open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
