"""Measured KV-cache bytes of ``headmine kv``'s compact mixed cache on a real model, and its equality to the
masked mixed cache (issue 13 §5).

For each model: one needle prompt of ``--length`` tokens (the project's needle task), greedy ``--new``
tokens under (a) the plain cache, (b) the compact mixed cache and (c) the masked mixed cache, with
``round(budget x KV heads)`` RANDOM KV heads full (fixed seed; on a model without sliding-window layers the
bytes depend only on how many heads are full, not which). Prints the cache bytes MEASURED after
generation (sum of the key/value tensor bytes the cache holds), the figure ``kv_memory`` computes, and
the largest score difference and token agreement between compact and masked.

Usage: ``python bench/bench_kv_cache_memory.py smollm2 gemma3-270m --length 1024 --new 8``
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import DynamicCache

from headmine.apply.kv import KVPolicy, kv_memory, mixed_cache
from headmine.apply.kv_cache import cache_bytes
from headmine.models.loading import load_model
from headmine.tasks.needle import needle


def _generate(lm, x, new, pol, compact=True):
    cache = DynamicCache(config=lm.model.config)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    ctx = mixed_cache(lm, pol, compact=compact) if pol is not None else torch.no_grad()
    with ctx, torch.no_grad():
        out = lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), cache=cache, max_new_tokens=new,
                                min_new_tokens=new, do_sample=False, use_cache=True, pad_token_id=pad, output_scores=True,
                                return_dict_in_generate=True)
    return out, cache_bytes(cache)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--budgets", default="0.25,0.5")
    ap.add_argument("--sink", type=int, default=16)
    ap.add_argument("--recent", type=int, default=64)
    args = ap.parse_args()
    for name in args.models:
        t0, c0 = time.perf_counter(), time.process_time()
        lm = load_model(name)
        g = lm.geometry
        batch = needle(lm.tokenizer, n=1, seed=0, context_lengths=(args.length,), depths=(0.5,))
        ids = batch.input_ids[0, : int(batch.lengths[0])].tolist()
        x = torch.tensor([ids])
        cached = len(ids) + args.new - 1
        _, plain_bytes = _generate(lm, x, args.new, None)
        print(f"## {name}: {len(ids)}-token prompt + {args.new} generated = {cached} cached tokens; "
              f"{g.n_layers} layers x {g.n_kv_heads} KV heads; sink {args.sink}, recent {args.recent}")
        print("| condition | measured KV MiB | computed KV MiB | measured share of full | positions MiB |")
        print("|---|---|---|---|---|")
        full_comp = kv_memory(lm, KVPolicy(torch.ones(g.n_layers, g.n_kv_heads, dtype=torch.bool)), cached)
        print(f"| full cache | {plain_bytes['kv_bytes'] / 2**20:.3f} | {full_comp['kv_bytes'] / 2**20:.3f} | 1.000 | 0 |")
        checks = []
        n_kv = g.n_layers * g.n_kv_heads
        for budget in (float(b) for b in args.budgets.split(",")):
            k = round(budget * n_kv)
            full = torch.zeros(n_kv, dtype=torch.bool)
            full[random.Random(0).sample(range(n_kv), k)] = True
            pol = KVPolicy(full.view(g.n_layers, g.n_kv_heads), sink=args.sink, recent=args.recent)
            compact, cb = _generate(lm, x, args.new, pol)
            masked, mb = _generate(lm, x, args.new, pol, compact=False)
            comp = kv_memory(lm, pol, cached)
            print(f"| {k} of {n_kv} KV heads full (budget {budget}) | {cb['kv_bytes'] / 2**20:.3f} | "
                  f"{comp['kv_bytes'] / 2**20:.3f} | {cb['kv_bytes'] / plain_bytes['kv_bytes']:.3f} | "
                  f"{cb['meta_bytes'] / 2**20:.4f} |")
            a, b = torch.stack(compact.scores), torch.stack(masked.scores)
            fin = torch.isfinite(a) & torch.isfinite(b)  # min_new_tokens puts -inf on end-of-text
            diff = (a[fin] - b[fin]).abs().max().item() if bool(torch.equal(~fin, ~torch.isfinite(a))) else float("nan")
            checks.append(f"budget {budget}: compact vs masked: same tokens {torch.equal(compact.sequences, masked.sequences)}, "
                          f"max |score difference| {diff:.2e}; masked cache held {mb['kv_bytes'] / 2**20:.3f} MiB")
        for c in checks:
            print(c)
        print(f"wall {time.perf_counter() - t0:.0f} s, CPU {time.process_time() - c0:.0f} s\n")


if __name__ == "__main__":
    main()
