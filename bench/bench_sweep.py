"""Exact all-head zero-ablation sweep vs the naive loop vs TransformerLens vs nnsight on SmolLM2 (IOI).

Same prompts, same heads, same metric (logit difference IO - S at END), interleaved: each round runs every
method once, in a rotated order, and the table reports the median over ``--rounds`` rounds.

Sizes (``--size``): ``ioi`` is the built-in IOI task as it tokenises (``--n`` prompts, right-padded to the
longest); ``16x128`` is 16 IOI prompts each left-filled with neutral story text to exactly 128 tokens.
Heads (``--heads``): ``full`` sweeps all 270 heads with every method; ``layer`` sweeps one head per layer
(head ``l mod H`` of layer ``l``) with every method, the exact sweep included, and scales each time by
heads / layers: exact, because the set is uniform over layers, and conservative for the exact sweep, which
batches the heads of a layer together (one per layer forgoes that).

The peers need their own environment (see bench/requirements-peers.txt); a peer that cannot run is
reported as an error row, never left out silently.

    python bench/bench_sweep.py --size ioi --n 8 --heads full --rounds 3 --out bench/results/sweep_ioi.json
    python bench/bench_sweep.py --size 16x128 --heads layer --rounds 3 --out bench/results/sweep_16x128.json
"""

from __future__ import annotations

import argparse
import json
import statistics
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


FILLER = (" The weather had been mild all week, and the town was quiet. People walked to work, the shops opened"
          " late, and the river ran slowly past the old mill where children liked to play after school.")


def long_inputs(lm, ids, mask, metric, length: int):
    """Each prompt (real tokens only) left-filled with FILLER tokens to exactly ``length`` tokens."""
    from headmine.causal.metrics import AnswerMetric

    filler = lm.tokenizer(FILLER * 20, add_special_tokens=False)["input_ids"]
    rows = []
    for b in range(ids.shape[0]):
        real = ids[b, : int(mask[b].sum())].tolist()
        if len(real) > length:
            raise SystemExit(f"prompt {b} has {len(real)} tokens, more than --length {length}")
        rows.append(filler[: length - len(real)] + real)
    long_ids = torch.tensor(rows)
    end = torch.full((ids.shape[0],), length - 1, dtype=torch.long)
    return long_ids, torch.ones_like(long_ids), AnswerMetric(kind=metric.kind, end_pos=end, target_id=metric.target_id, wrong_id=metric.wrong_id)


def exact(lm, ids, mask, metric, heads):
    """headmine's exact fast sweep (``ablation_sweep``, prefix cache) on ``heads``."""
    res = ablation_sweep(lm, ids, mask, metric, heads=heads, mode="zero")
    return {h: res.values[h.layer, h.head] for h in heads}


def compute_bound(lm, ids, mask, metric, repeats: int = 3) -> dict:
    """The fastest any exact per-head sweep can be against one full forward per head: times (best of
    ``repeats``) of a plain forward, of the decoder body alone and of the sweep running all layers for one
    variant, and the ratio (body + unembedding) / (body x mean share of layers after the ablated head)."""
    from headmine.causal.fast_sweep import PrefixCache

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    cache = PrefixCache(lm, ids, mask)
    n_layers = lm.geometry.n_layers
    with torch.no_grad():
        forward = best(lambda: lm.model(input_ids=ids, attention_mask=mask, use_cache=False))
        sweep_all_layers = best(lambda: cache.run_from(0, 1, positions=metric.end_pos))
    mean_share = sum(n_layers - layer for layer in range(n_layers)) / n_layers / n_layers
    return {"plain_forward_s": forward, "sweep_all_layers_s": sweep_all_layers,
            "unembedding_all_positions_s": forward - sweep_all_layers,
            "bound_ratio": forward / (sweep_all_layers * mean_share)}


METHODS = {"exact": exact, "naive": naive, "transformer_lens": transformer_lens, "nnsight": nnsight_loop}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("ioi", "16x128"), default="ioi")
    ap.add_argument("--n", type=int, default=8, help="prompts at --size ioi (16x128 always uses 16)")
    ap.add_argument("--heads", choices=("full", "layer"), default="full")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--bound", action="store_true", help="only measure the compute bound (compute_bound) and exit")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    g = lm.geometry
    method = get_method("ablation")
    n = 16 if args.size == "16x128" else args.n
    inp = prepare_inputs(lm, method, method.config(task="ioi", n=n))
    ids, mask, metric = inp.clean_ids, inp.clean_mask, inp.metric
    if args.size == "16x128":
        ids, mask, metric = long_inputs(lm, ids, mask, metric, 128)
    if args.bound:
        print(json.dumps({"size": args.size, "tokens": list(ids.shape), **compute_bound(lm, ids, mask, metric)}, indent=1))
        return
    all_heads = g.heads()
    heads = all_heads if args.heads == "full" else [h for h in all_heads if h.head == h.layer % g.n_heads]
    scale = len(all_heads) / len(heads)
    names = [m for m in args.methods.split(",") if m]
    report: dict = {"size": args.size, "tokens": list(ids.shape), "heads_total": len(all_heads),
                    "heads_run": len(heads), "rounds": args.rounds, "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "times_s": {m: [] for m in names}, "errors": {}, "max_abs_diff": {}}
    ref = None
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if name in report["errors"]:
                continue
            try:
                t = time.perf_counter()
                vals = METHODS[name](lm, ids, mask, metric, heads)
                dt = time.perf_counter() - t
            except Exception as err:  # a peer that cannot run here is reported, not hidden
                report["errors"][name] = f"{type(err).__name__}: {err}"[:500]
                continue
            report["times_s"][name].append(dt * scale)
            if name == "exact" and ref is None:
                ref = vals
            if ref is not None and name != "exact":
                diff = max(float((vals[h].cpu().float() - ref[h]).abs().max()) for h in heads)
                report["max_abs_diff"][name] = max(diff, report["max_abs_diff"].get(name, 0.0))
            print(f"round {r} {name}: {dt:.1f} s on {len(heads)} heads ({dt * scale:.1f} s for all)", flush=True)
    med = {m: statistics.median(v) for m, v in report["times_s"].items() if v}
    report["median_all_heads_s"] = med
    if "exact" in med:
        report["speedup_of_exact"] = {m: med[m] / med["exact"] for m in med if m != "exact"}
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
