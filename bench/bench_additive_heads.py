"""Subject, relation and mixed heads (Chughtai et al. 2024) on real models: labels on fit facts, checks on held-out.

    python bench/bench_additive_heads.py [--models smollm2,gemma3-270m] [--n-random 20] [--seed 0] [--out bench/results/additive_heads.json]

Single-threaded, timed in process CPU seconds. Per model: the built-in relations' facts split in half by
subject (``split_relation_facts``), the facts the model ranks first kept, source-decomposed DLA and labels
on the fit half, read-ablation checks against random heads on the held-out half. Prints the top heads by
fit DLA with their parts, each type's heads and its check, and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from headmine.causal.factual_recall.additive_heads import AdditiveConfig, additive_heads, split_fact_prompts
from headmine.models.loading import load_model

COLS = ["head", "dla", "dla_subject", "dla_relation", "dla_other", "subject_specificity", "relation_specificity",
        "relation_set_push", "relation_swap", "dla_end", "heldout_dla", "source", "label"]


def run(name: str, config: AdditiveConfig) -> dict[str, Any]:
    lm = load_model(name)
    t0 = time.process_time()
    fit, held, attributes = split_fact_prompts(lm, seed=config.seed)
    t_prompts = time.process_time() - t0
    res = additive_heads(lm, fit, held, attributes=attributes, config=config)
    cpu = time.process_time() - t0
    df = res.frame()
    top = df[COLS].head(15)
    print(f"== {name}: {res.n_fit} fit / {res.n_heldout} held-out known facts, tau {res.tau:.3f}, "
          f"CPU {cpu:.1f} s (prompts {t_prompts:.1f} s)")
    print(top.round(3).to_string(index=False))
    for kind, heads in res.labels.items():
        print(f"{kind}: {[str(h) for h in heads]}")
        print(f"  check: {res.checks[kind]}")
    rels = sorted(set(fit.meta["relation"]) | set(held.meta["relation"]))
    return {"model": name, "n_fit": res.n_fit, "n_heldout": res.n_heldout, "relations_known": rels, "tau": res.tau,
            "labels": {k: [str(h) for h in v] for k, v in res.labels.items()}, "checks": res.checks,
            "top": top.to_dict(orient="records"), "cpu_seconds": cpu, "config": vars(config)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2")
    ap.add_argument("--n-random", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="the fact split's and the random draws' seed")
    ap.add_argument("--out", type=Path, default=Path("bench/results/additive_heads.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    config = AdditiveConfig(n_random=args.n_random, seed=args.seed)
    out = [run(m, config) for m in args.models.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
