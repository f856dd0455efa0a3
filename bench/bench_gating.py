"""Causal Head Gating benchmark (CPU by default), one model, one task batch.

Measures (median of interleaved repeats):
- one CHG update (gated forward + backward to the gate logits + Adam step) for B rows and K gate sets,
  in forward+backward equivalents: vs a plain forward+backward of the same K*B rows (gradients to the
  input embeddings only: the same activation backward, no weight gradients) and vs a training step
  (weight gradients); target <= 1.2x the plain forward+backward;
- K seeds in one batched pass vs K separate single-seed updates;
- a full quick-preset fit (3 stages) on the task: wall time and peak resident memory.

Usage: python bench/bench_gating.py [--model smollm2] [--task ioi] [--rows 8] [--seeds 2] [--repeats 3] [--no-fit]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from headmine.causal.head_gating import CHGConfig, fit_chg, gated_logprob, task_data
from headmine.causal.head_gating.logprob import _seq_logprob, _target_logits
from headmine.models.loading import load_model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", default="ioi")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-fit", action="store_true")
    p.add_argument("--fit-only", action="store_true", help="only the quick fit (clean peak-memory number)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    g = lm.geometry
    data, _ = task_data(lm, args.task, n=max(args.rows, 16), seed=0)
    k, b = args.seeds, args.rows
    ids, att, lmask = data.rows(range(b))
    ids_k, att_k, lmask_k = ids.repeat(k, 1), att.repeat(k, 1), lmask.repeat(k, 1)
    emb = lm.adapter.embedding()

    def plain_fb() -> None:  # same activation backward, no weight gradients
        x = emb(ids_k).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = lm.model(inputs_embeds=x, attention_mask=att_k).logits
            (-_seq_logprob(logits, ids_k, lmask_k).mean()).backward()

    def plain_fb_keep() -> None:  # as above, logits only at target positions (what CHG does)
        x = emb(ids_k).detach().requires_grad_(True)
        keep = lmask_k[:, 1:].any(0).nonzero().flatten()
        with torch.enable_grad():
            logits = lm.model(inputs_embeds=x, attention_mask=att_k, logits_to_keep=keep).logits
            col = torch.full((ids_k.shape[1],), -1, dtype=torch.long)
            col[keep] = torch.arange(keep.numel())
            (-_seq_logprob(logits, ids_k, lmask_k, col).mean()).backward()

    def train_step() -> None:  # a plain training step: weight gradients too
        params = [q for q in lm.model.parameters()]
        for q in params:
            q.requires_grad_(True)
        try:
            with torch.enable_grad():
                logits, col = _target_logits(lm, ids_k, att_k, lmask_k)
                (-_seq_logprob(logits, ids_k, lmask_k, col).mean()).backward()
        finally:
            for q in params:
                q.requires_grad_(False)
                q.grad = None

    def forward_only() -> None:
        with torch.no_grad():
            lm.model(input_ids=ids_k, attention_mask=att_k)

    def chg_update(kk: int) -> None:
        theta = torch.zeros(kk, g.n_layers, g.n_heads, requires_grad=True)
        opt = torch.optim.Adam([theta], lr=0.1)
        with torch.enable_grad():
            lp = gated_logprob(lm, ids, att, lmask, torch.sigmoid(theta))
            (-lp.mean(1)).sum().backward()
        opt.step()

    def k_separate() -> None:
        for _ in range(k):
            chg_update(1)

    cases = {
        "forward only (K*B rows)": forward_only,
        "plain fwd+bwd (K*B rows, full logits)": plain_fb,
        "plain fwd+bwd (K*B rows, target logits)": plain_fb_keep,
        "training step (K*B rows, weight grads)": train_step,
        f"CHG update, K={k} in one pass": lambda: chg_update(k),
        f"CHG update, K={k} separate passes": k_separate,
    }
    out: dict = {"model": args.model, "task": args.task, "rows": b, "seeds": k, "tokens_per_row": int(ids.shape[1]),
                 "threads": args.threads}
    if not args.fit_only:
        times: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn))
        med = {name: statistics.median(v) for name, v in times.items()}
        upd = med[f"CHG update, K={k} in one pass"]
        out.update({
            "median_s": med,
            "update_vs_plain_fwd_bwd_full_logits": upd / med["plain fwd+bwd (K*B rows, full logits)"],
            "update_vs_plain_fwd_bwd_target_logits": upd / med["plain fwd+bwd (K*B rows, target logits)"],
            "update_vs_training_step": upd / med["training step (K*B rows, weight grads)"],
            "update_in_forwards": upd / med["forward only (K*B rows)"],
            "one_pass_vs_separate": upd / med[f"CHG update, K={k} separate passes"],
        })
    if not args.no_fit:
        cfg = CHGConfig.preset_for("quick", seeds=k)
        rss0 = peak_rss_mb()
        t = timed(lambda: fit_chg(lm, data, cfg))
        out["quick_fit"] = {"config": {"updates": cfg.updates, "batch_size": cfg.batch_size, "seeds": cfg.seeds},
                            "rows": len(data), "wall_s": t, "peak_rss_mb_before": rss0, "peak_rss_mb_after": peak_rss_mb()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
