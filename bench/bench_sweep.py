"""Exact all-head zero-ablation sweep vs the naive loop vs TransformerLens vs nnsight on SmolLM2 (IOI).

Same prompts, same heads, same metric (logit difference IO - S at END). The exact sweep runs every
head; the naive loop and the peers run ``--sample`` heads spread over all layers (one full forward
each, so their per-head cost is flat) and their all-head time is extrapolated (``--full`` runs
them on every head instead). Numbers are compared on the sampled heads.

    python bench/bench_sweep.py --n 4 --sample 12 [--full] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from headmine.causal.ablation import ablation_sweep
from headmine.causal.methods import get_method
from headmine.models.loading import load_model
from headmine.pipeline.causal import prepare_inputs


def naive(lm, ids, mask, metric, heads):
    """headmine's own loop: one full forward per head with the head's z zeroed (plus one baseline forward for
    all heads together), as the peers do; the exact sweep's reference."""
    res = ablation_sweep(lm, ids, mask, metric, heads=heads, fast=False)
    return {h: res.values[h.layer, h.head] for h in heads}


def _hf_folder(lm) -> str:
    """A local folder with the model's config.json (the GGUF conversion cache) so no hub access is needed."""
    from pathlib import Path

    from headmine.models.loading import cache_root

    want = lm.model.config
    for cfg in Path(cache_root()).rglob("config.json"):
        c = json.loads(cfg.read_text())
        if c.get("hidden_size") == want.hidden_size and c.get("num_hidden_layers") == want.num_hidden_layers:
            return str(cfg.parent)
    raise RuntimeError("no local SmolLM2 config folder found for TransformerBridge.boot_transformers")


def transformer_lens(lm, ids, mask, metric, heads):
    """TransformerLens's patching utility (generic_activation_patch) patching z with zeros = zero ablation."""
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    folder = lm.provenance.to_dict().get("local_path") or _hf_folder(lm)
    model = TransformerBridge.boot_transformers(folder, hf_model=lm.model, tokenizer=lm.tokenizer, device="cpu",
                                                dtype=torch.float32)
    model.enable_compatibility_mode(no_processing=True)
    # right padding never reaches the prediction position of a causal model, so no mask is needed here
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_z"))
    for k in list(cache.keys()):
        cache.cache_dict[k] = torch.zeros_like(cache.cache_dict[k])
    index_df = __import__("pandas").DataFrame({"layer": [h.layer for h in heads], "head": [h.head for h in heads]})
    vals = patching.generic_activation_patch(
        model, ids, cache, lambda logits: metric(logits), patching.layer_head_vector_patch_setter, "z",
        index_df=index_df, reduce="none")
    return {h: v for h, v in zip(heads, vals.values, strict=True)}


def nnsight_loop(lm, ids, mask, metric, heads):
    from nnsight import LanguageModel

    model = LanguageModel(lm.model, tokenizer=lm.tokenizer)
    d = lm.geometry.d_head
    out = {}
    for h in heads:
        with torch.no_grad(), model.trace({"input_ids": ids, "attention_mask": mask}):
            o_proj = model.model.layers[h.layer].self_attn.o_proj
            o_proj.input[:, :, h.head * d:(h.head + 1) * d] = 0
            logits = model.lm_head.output.save()
        out[h] = metric(logits)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--sample", type=int, default=12)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    g = lm.geometry
    method = get_method("ablation")
    inp = prepare_inputs(lm, method, method.config(task="ioi", n=args.n))
    ids, mask, metric = inp.clean_ids, inp.clean_mask, inp.metric
    all_heads = g.heads()
    step = max(1, len(all_heads) // args.sample)
    sample = all_heads if args.full else all_heads[::step][: args.sample]
    report: dict = {"prompts": args.n, "tokens": list(ids.shape), "heads_total": len(all_heads), "heads_sampled": len(sample)}

    t = time.perf_counter()
    fast = ablation_sweep(lm, ids, mask, metric, mode="zero")
    report["exact_sweep_all_heads_s"] = time.perf_counter() - t
    ref = {h: fast.values[h.layer, h.head] for h in sample}

    peers = {"naive": naive, "transformer_lens": transformer_lens, "nnsight": nnsight_loop}
    for name, fn in peers.items():
        try:
            t = time.perf_counter()
            vals = fn(lm, ids, mask, metric, sample)
            dt = time.perf_counter() - t
            report[f"{name}_sampled_s"] = dt
            report[f"{name}_all_heads_s_est"] = dt / len(sample) * len(all_heads)
            report[f"{name}_max_abs_diff"] = max(float((vals[h].cpu().float() - ref[h]).abs().max()) for h in sample)
            report[f"speedup_vs_{name}"] = report[f"{name}_all_heads_s_est"] / report["exact_sweep_all_heads_s"]
        except Exception as err:  # a peer that cannot run here is reported, not hidden
            report[f"{name}_error"] = f"{type(err).__name__}: {err}"[:500]
        print(json.dumps(report, indent=1), flush=True)
    if "naive_all_heads_s_est" in report:
        report["exact_over_naive_time"] = report["exact_sweep_all_heads_s"] / report["naive_all_heads_s_est"]
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
