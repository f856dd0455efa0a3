"""Per-stage cost ratios on randomly initialised models of real shapes, on any device and dtype
(issue 12 §4-5; the numbers behind docs/SCALING.md).

Random weights time the same as trained ones, so this runs where no checkpoint can go (a lent GPU
has no network and a 64 MiB working tree). For each shape it measures, median of ``--repeats``:
- the plain forward of B x T tokens (the unit),
- the exact all-head mean-ablation sweep, per head, in forward units,
- attribution patching (one forward + backward with gradients to every head's z),
- one CHG update's forward + backward through sigmoid gates on every head,
- a pattern capture of every head (the scan's pass), eager or recomputed from q, k.

    python bench/bench_scale.py --shape smollm2-135m [--device cpu] [--dtype float32] [--batch 8] [--tokens 64]
    python bench/bench_scale.py --shape llama3-8b --device cuda --dtype bfloat16 --sweep-layers 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.ablation import ablation_sweep
from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.engine import run_with_interventions
from headmine.causal.interventions import Gate
from headmine.causal.metrics import AnswerMetric
from headmine.core.ids import HeadId, Site
from headmine.core.provenance import ModelProvenance
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from headmine.models.placement import parse_device, parse_dtype

# Public config.json values of the released models (architecture only; no weights).
SHAPES: dict[str, Callable[[], Any]] = {
    "smollm2-135m": lambda: LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                        rope_theta=100000.0, tie_word_embeddings=True),
    "llama3-8b": lambda: LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                     rope_theta=500000.0),
    "qwen2.5-7b": lambda: Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                      num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                                      rope_theta=1000000.0),
}


def random_model(shape: str, device: torch.device, dtype: torch.dtype, attn: str) -> LoadedModel:
    config = SHAPES[shape]()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    prov = ModelProvenance(name=shape, source="random init", source_kind="random", dtype=str(dtype).removeprefix("torch."),
                           device=str(device), model_type=config.model_type)
    return LoadedModel(name=shape, model=model, tokenizer=None, adapter=adapter_for(model), provenance=prov)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attn", default="sdpa", help="attention implementation of the forward (sdpa: patterns are recomputed)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sweep-layers", type=int, default=0, help="sweep the heads of this many evenly spaced layers (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    req = parse_device(args.device)
    device = req.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = parse_dtype(args.dtype)
    lm = random_model(args.shape, device, dtype, args.attn)
    g = lm.geometry
    gen = torch.Generator().manual_seed(0)
    b, t = args.batch, args.tokens
    ids = torch.randint(0, g.vocab_size, (b, t), generator=gen).to(device)
    corrupted = torch.randint(0, g.vocab_size, (b, t), generator=gen).to(device)
    ones = torch.ones_like(ids)
    metric = AnswerMetric(kind="logit_diff", end_pos=torch.full((b,), t - 1), target_id=torch.randint(0, g.vocab_size, (b,), generator=gen),
                          wrong_id=torch.randint(0, g.vocab_size, (b,), generator=gen))
    layers = list(range(g.n_layers))
    if args.sweep_layers:
        step = max(1, g.n_layers // args.sweep_layers)
        layers = layers[::step][: args.sweep_layers]
    heads = [HeadId(layer, h) for layer in layers for h in range(g.n_heads)]
    theta = torch.zeros(g.n_layers, g.n_heads, device=device, requires_grad=True)

    def chg_step() -> None:
        logits = run_with_interventions(lm, ids, interventions=[Gate(factors=torch.sigmoid(theta))], grad=True)
        metric(logits).sum().backward()
        theta.grad = None

    with torch.no_grad():
        fwd = timed(lambda: lm.forward(ids), device, args.repeats)
    sweep = timed(lambda: ablation_sweep(lm, ids, None, metric, mode="mean", heads=heads), device, 1)
    attribution = timed(lambda: attribution_patching(lm, ids, ones, corrupted, ones, metric), device, args.repeats)
    chg = timed(chg_step, device, args.repeats)
    capture = timed(lambda: run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN}), keep_logits=False), ids), device, args.repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    # the sweep reruns each head's layer and those after it: a layer-l head costs (L - l) / L of a forward
    full_sweep_units = sweep / fwd * (g.n_layers * g.n_heads) / len(heads) * (
        sum(g.n_layers - layer for layer in range(g.n_layers)) / g.n_layers) / (sum(g.n_layers - layer for layer in layers) / len(layers))
    out = {
        "shape": args.shape, "device": str(device), "dtype": args.dtype, "attn": args.attn, "batch": b, "tokens": t,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "threads": torch.get_num_threads(), "heads": g.n_layers * g.n_heads, "swept_heads": len(heads),
        "forward_s": fwd, "forward_ms_per_token": 1000 * fwd / (b * t),
        "sweep_per_head_units": sweep / fwd / len(heads), "sweep_all_heads_units": full_sweep_units,
        "attribution_units": attribution / fwd, "chg_update_units": chg / fwd, "pattern_capture_units": capture / fwd,
        "peak_gpu_gib": peak,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
