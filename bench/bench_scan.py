"""Benchmark the head scan on SmolLM2 (a script, not a test).

    python bench/bench_scan.py [--n 16] [--threads 1] [--memory-n 1000] [--skip-tl] [--skip-memory]

Measured side by side in one run, on the same tokens:
1. the pattern-detector scan (all attention-pattern detectors, no causal step) vs one plain eager
   forward pass over the same batches;
2. TransformerLens ``detect_head`` (previous / duplicate / induction, "mul", exclude_bos=True) vs
   headmine's three detectors: wall time and the correlation of the scores;
3. peak resident memory of a scan over ``--memory-n`` sequences vs a scan over one batch (each in
   a fresh subprocess; the kernel's peak-RSS mark is reset after the model loads, so the number is
   the peak during the scan itself).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

PATTERN_DETECTORS = ("previous_token", "duplicate_token", "induction", "prefix_matching", "positional", "local",
                     "attention_sink")


def _probe_params(n: int) -> dict[str, dict[str, Any]]:
    return {"repeated_tokens": {"n": n, "seq_len": 50}, "natural_text": {"n": n, "seq_len": 64}}


def plain_forward(lm, batches) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for ids, mask in batches:
            lm.model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - t0


def scan_time(lm, detectors, n: int, batch_size: int):
    from headmine.pipeline.scan import ScanConfig, scan_model

    cfg = ScanConfig(detectors=detectors, probe_params=_probe_params(n), causal=False, batch_size=batch_size)
    t0 = time.perf_counter()
    res = scan_model(lm, cfg)
    return time.perf_counter() - t0, res


def probe_batches(lm, n: int, batch_size: int, seed: int = 0):
    from headmine.tasks import load_probe

    out = {}
    for task, params in _probe_params(n).items():
        probe = load_probe(task, lm.tokenizer, seed=seed, **params)
        out[task] = probe
    pairs = [(b.input_ids, b.attention_mask) for p in out.values() for b in p.split(batch_size)]
    return out, pairs


class _ExactTokens:
    """Hands TransformerLens our exact token ids: ``to_tokens(key)`` looks the ids up by key."""

    def __init__(self, bridge, rows: dict[str, torch.Tensor]):
        self._bridge, self._rows = bridge, rows
        self.cfg = bridge.cfg

    def to_tokens(self, seq, *args, **kwargs):
        if isinstance(seq, list):  # detect_head tokenises the whole list once before scoring row by row
            return self._rows[seq[0]][None]
        return self._rows[seq][None]

    def run_with_cache(self, *args, **kwargs):
        return self._bridge.run_with_cache(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._bridge, name)


def transformer_lens_compare(lm, probes, ours_res) -> dict[str, Any]:
    try:
        from transformer_lens.head_detector import detect_head
        from transformer_lens.model_bridge import TransformerBridge
    except Exception as err:
        return {"error": f"transformer_lens import failed: {err!r}"}
    from headmine.models.loading import cache_root

    source = lm.provenance.source
    cached = [p for p in cache_root().rglob("config.json")]
    name = str(cached[0].parent) if cached else source
    try:
        t0 = time.perf_counter()
        bridge = TransformerBridge.boot_transformers(name, hf_model=lm.model, tokenizer=lm.tokenizer)
        if hasattr(bridge, "enable_compatibility_mode"):
            bridge.enable_compatibility_mode(no_processing=True)
        boot = time.perf_counter() - t0
    except Exception as err:
        return {"error": f"TransformerBridge.boot_transformers failed: {type(err).__name__}: {err}"}
    out: dict[str, Any] = {"boot_s": boot, "model_name_given": name}
    mapping = {"previous_token": ("repeated_tokens", "previous_token_head"),
               "duplicate_token": ("repeated_tokens", "duplicate_token_head"),
               "induction": ("repeated_tokens", "induction_head")}
    tl_total = 0.0
    for ours, (task, tl_name) in mapping.items():
        probe = probes[task]
        rows = {f"row{i}": probe.input_ids[i][probe.attention_mask[i].bool()] for i in range(len(probe))}
        proxy = _ExactTokens(bridge, rows)
        t0 = time.perf_counter()
        try:
            tl = detect_head(proxy, list(rows), tl_name, exclude_bos=True, error_measure="mul")
        except Exception as err:
            out[ours] = {"error": f"{type(err).__name__}: {err}"}
            continue
        dt = time.perf_counter() - t0
        tl_total += dt
        mine = ours_res.matrix(ours)
        a, b = tl.detach().cpu().numpy().ravel(), mine.ravel()
        ok = np.isfinite(a) & np.isfinite(b)
        from scipy.stats import spearmanr

        out[ours] = {"tl_s": dt, "pearson": float(np.corrcoef(a[ok], b[ok])[0, 1]),
                     "spearman": float(spearmanr(a[ok], b[ok]).statistic),
                     "tl_top": _top(tl.detach().cpu().numpy()), "ours_top": _top(mine)}
    out["tl_total_s"] = tl_total
    return out


def _top(m: np.ndarray, k: int = 5) -> list[str]:
    flat = np.nan_to_num(m, nan=-1).ravel()
    idx = np.argsort(-flat)[:k]
    return [f"L{i // m.shape[1]}H{i % m.shape[1]} {flat[i]:.2f}" for i in idx]


def memory_child(n: int, batch_size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    from headmine.models.loading import load_model
    from headmine.pipeline.scan import ScanConfig, scan_model

    lm = load_model("smollm2")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak()
    cfg = ScanConfig(detectors=("previous_token", "duplicate_token", "induction", "attention_sink"),
                     probe_params={"repeated_tokens": {"n": n, "seq_len": 20}, "natural_text": {"n": min(n, 40), "seq_len": 40}},
                     causal=False, batch_size=batch_size)
    t0 = time.perf_counter()
    scan_model(lm, cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"n": n, "after_load_peak_mb": base / 1024, "process_peak_mb": peak / 1024, "scan_s": time.perf_counter() - t0}
    if reset:
        out["scan_peak_rss_mb"] = _vm("VmHWM") / 1024  # peak since the reset, i.e. during the scan
        out["rss_at_reset_mb"] = reset / 1024
    print(json.dumps(out))


def _vm(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return float(line.split()[1])  # kB
    return float("nan")


def _reset_peak() -> float | None:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to clear_refs); returns the RSS at reset in kB."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _vm("VmRSS")
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-n", type=int, default=1000)
    ap.add_argument("--skip-tl", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, default=None)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.batch_size, args.threads)
        return
    torch.set_num_threads(args.threads)
    from headmine.models.loading import load_model

    lm = load_model("smollm2")
    probes, pairs = probe_batches(lm, args.n, args.batch_size)
    plain_forward(lm, pairs[:1])  # warm-up
    report: dict[str, Any] = {"threads": args.threads, "n_per_task": args.n, "batch_size": args.batch_size,
                              "tokens": int(sum(int(m.sum()) for _, m in pairs))}
    fwd = plain_forward(lm, pairs)
    scan_s, _ = scan_time(lm, PATTERN_DETECTORS, args.n, args.batch_size)
    fwd2 = plain_forward(lm, pairs)  # again, to bracket load drift on a shared machine
    report["plain_forward_s"] = [fwd, fwd2]
    report["pattern_scan_s"] = scan_s
    report["pattern_scan_ratio"] = scan_s / min(fwd, fwd2)
    three_s, three = scan_time(lm, ("previous_token", "duplicate_token", "induction"), args.n, args.batch_size)
    report["three_detectors_scan_s"] = three_s
    if not args.skip_tl:
        report["transformer_lens"] = transformer_lens_compare(lm, probes, three)
        tl_total = report["transformer_lens"].get("tl_total_s")
        if tl_total:
            report["tl_over_headmine"] = tl_total / three_s
    print(json.dumps(report, indent=2), flush=True)
    if not args.skip_memory:
        mem = {}
        for n in (args.batch_size, args.memory_n):
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch-size", str(args.batch_size),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            mem[n] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({"memory": mem}, indent=2))


if __name__ == "__main__":
    main()
