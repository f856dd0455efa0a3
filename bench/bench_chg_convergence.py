"""Which CPU CHG configuration converges on SmolLM2 IOI? (issue 10 section 5)

Fits CHG on the data ``headmine gate smollm2 --task ioi`` uses (built-in IOI prompts, seed 0; the loss
is on the answer token only: one target token per row, see ``GatingData.loss_mask``) under several
configurations, one model load, and records per configuration: the convergence verdict and its
reasons, relative objective change per stage (worst seed), mean pre-clip gradient norm over each
stage's last 10%, F/N/I shares (pooled seeds and "always"), seed agreement (F Pearson r, label
agreement), the label agreement with the reference fit (``bench_chg_reference.py``: mean over seed
pairs config x reference), wall time and process CPU time. Under load, CPU time (one thread) is the
closer estimate of the wall time on an otherwise idle machine.

One JSON line per configuration is appended to ``--out`` (default bench/results/chg_convergence.jsonl).

Usage: python bench/bench_chg_convergence.py [--configs quick,q_full16,...] [--ref /work/cmp/chg_ref.safetensors]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headmine.causal.head_gating import CHGConfig, GatingData, fit_chg, label_codes, mean_logprob, task_data
from headmine.causal.head_gating.results import label_kappa
from headmine.models.loading import load_model

#: prompts after the fitted ones, never fitted on: the answer log-prob of the lam = 0 gates G there vs the
#: clean model tells whether stage G generalises or overfits its rows.
HELD_OUT = 32

#: name -> (n prompts, CHGConfig overrides on the named preset). Keep the grid small: each fit costs minutes.
CONFIGS: dict[str, tuple[int, str, dict[str, Any]]] = {
    # the old default: 3 x 20 updates, batch 8, lr 0.5 -> 0.1, 2 seeds
    "old_quick": (64, "paper", dict(updates=(20, 20, 20), lrs=((0.5, 0.1),) * 3, batch_size=8, micro_batch=16,
                                    seeds=2, eval_rows=16)),
    # full batch on a small prompt set: no mini-batch noise, so Adam's per-head steps follow the sign of the
    # (tiny) regulariser wherever the data gradient is ~0, and gates saturate in ~4 / lr updates
    "full8_g05": (8, "paper", dict(updates=(15, 25, 25), lrs=((0.5, 0.05), (1.0, 0.1), (1.0, 0.1)), batch_size=8,
                                   micro_batch=16, seeds=2, eval_rows=8)),
    "full16_g05": (16, "paper", dict(updates=(20, 30, 30), lrs=((0.5, 0.05), (1.0, 0.1), (1.0, 0.1)), batch_size=16,
                                     micro_batch=32, seeds=2, eval_rows=16)),
    "full16_g01": (16, "paper", dict(updates=(20, 30, 30), lrs=((0.1, 0.01), (1.0, 0.1), (1.0, 0.1)), batch_size=16,
                                     micro_batch=32, seeds=2, eval_rows=16)),
    # hypothesis (a): more prompts, mini-batches of 8 (the reference's data and batch), paper lrs, 20/60/60
    "mb64_paperlr": (64, "paper", dict(updates=(20, 60, 60), batch_size=8, micro_batch=16, seeds=2, eval_rows=16)),
    # the same with the gate logits projected into the regulariser's +-4 range after every update
    "mb64_paperlr_box": (64, "paper", dict(updates=(20, 60, 60), batch_size=8, micro_batch=16, seeds=2, eval_rows=16,
                                           project=True)),
    # box + a stage G fast enough to settle (inside the box a high lr cannot push logits out of reach)
    "mb64_box_g05": (64, "paper", dict(updates=(30, 60, 60), lrs=((0.5, 0.05),) * 3, batch_size=8, micro_batch=16,
                                       seeds=2, eval_rows=16, project=True)),
    # full batch (no noise: stages settle) + box + a 10x regulariser (moves the bistable band of |dNLL/dg|
    # to 0.015-0.21, so more heads are decided by the regulariser whatever the start)
    "full16_box_lam1": (16, "paper", dict(updates=(20, 30, 30), lrs=((0.5, 0.05),) * 3, batch_size=16, micro_batch=32,
                                          seeds=2, eval_rows=16, project=True, lam=1.0)),
}


def ref_agreement(g_plus: torch.Tensor, g_minus: torch.Tensor, ref: dict[str, torch.Tensor] | None,
                  threshold: float) -> float:
    """Mean share of heads with the same label, over all (seed, reference seed) pairs."""
    if ref is None:
        return float("nan")
    a = label_codes(g_plus, g_minus, threshold).flatten(1)
    b = label_codes(ref["G_plus"], ref["G_minus"], threshold).flatten(1)
    return float(np.mean([float((x == y).float().mean()) for x in a for y in b]))


def kappa(g_plus: torch.Tensor, g_minus: torch.Tensor, threshold: float) -> float:
    """Mean pairwise Cohen's kappa of the seeds' labels (:func:`~headmine.causal.head_gating.results.label_kappa`)."""
    codes = label_codes(g_plus, g_minus, threshold).flatten(1)
    out = [label_kappa(codes[i], codes[j]) for i in range(len(codes)) for j in range(i + 1, len(codes))]
    return float(np.mean(out)) if out else float("nan")


def _rows(data: GatingData, start: int, stop: int) -> GatingData:
    return GatingData(input_ids=data.input_ids[start:stop], attention_mask=data.attention_mask[start:stop],
                      loss_mask=data.loss_mask[start:stop], source=data.source)


def run(lm: Any, name: str, ref: dict[str, torch.Tensor] | None, gates_dir: str | None = None) -> dict[str, Any]:
    n, preset, over = CONFIGS[name]
    full, _ = task_data(lm, "ioi", n=n + HELD_OUT, seed=0)
    data, held = _rows(full, 0, n), _rows(full, n, n + HELD_OUT)
    cfg = CHGConfig.preset_for(preset, **over)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fit_chg(lm, data, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if gates_dir is not None:  # the gates, for later comparisons (e.g. with the reference once it lands)
        from safetensors.torch import save_file

        save_file({"G": res.G.contiguous(), "G_plus": res.G_plus.contiguous(), "G_minus": res.G_minus.contiguous()},
                  str(Path(gates_dir) / f"{name}.safetensors"))
    with torch.inference_mode():
        nll = {"clean_fit": -float(mean_logprob(lm, data)), "clean_held": -float(mean_logprob(lm, held)),
               "G_fit": (-mean_logprob(lm, data, res.G)).tolist(), "G_held": (-mean_logprob(lm, held, res.G)).tolist()}
    conv = res.convergence.to_dict() if res.convergence else {}
    shares = res.shares()
    return {
        "config": name, "n": n, "updates": cfg.updates, "lrs": cfg.lrs, "batch": cfg.batch_size, "seeds": cfg.seeds,
        "verdict": conv.get("verdict"), "reasons": conv.get("reasons"),
        "rel_change": {s: d["rel_change"] for s, d in conv.get("stages", {}).items()},
        "grad_norm_last": {s: d["grad_norm"] for s, d in conv.get("stages", {}).items()},
        "grad_norm_first": {s: d["grad_norm_first"] for s, d in conv.get("stages", {}).items()},
        "gate_flips": {s: d["gate_flips"] for s, d in conv.get("stages", {}).items()},
        "shares": {k: shares[k] for k in ("facilitating", "interfering", "irrelevant", "inconsistent", "unclassified",
                                          "F_always", "N_always", "I_always")},
        "F_pearson": conv.get("F_pearson"), "label_agreement": conv.get("label_agreement"),
        "ref_label_agreement": ref_agreement(res.G_plus, res.G_minus, ref, cfg.threshold),
        "kappa": kappa(res.G_plus, res.G_minus, cfg.threshold), "answer_nll": nll, "project": cfg.project,
        "wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads(),
    }


def table(path: Path) -> str:
    """The JSON lines of ``path`` as a markdown table (one row per configuration run)."""
    head = ("| config | n | updates | lrs | batch | seeds | verdict | rel. change G / G+ / G- | grad norm (last 10%) "
            "G / G+ / G- | F / N / I / incons. / uncl. (pooled) | F r | label agr. | kappa | answer NLL held-out: clean / G "
            "| vs ref | wall s | CPU s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        st = ("G", "G+", "G-")
        sh = r["shares"]
        out.append(
            f"| {r['config']}{' (box)' if r.get('project') else ''} | {r['n']} | {'/'.join(map(str, r['updates']))} | "
            f"{' '.join(f'{a:g}>{b:g}' for a, b in r['lrs'])} | {r['batch']} | {r['seeds']} | {r['verdict']} | "
            + " / ".join(f"{r['rel_change'].get(s, float('nan')):.3f}" for s in st) + " | "
            + " / ".join(f"{r['grad_norm_last'].get(s, float('nan')):.2g}" for s in st) + " | "
            + " / ".join(f"{sh[k]:.0%}" for k in ("facilitating", "interfering", "irrelevant", "inconsistent",
                                                  "unclassified"))
            + f" | {r['F_pearson']:.2f} | {r['label_agreement']:.2f} | {r.get('kappa', float('nan')):.2f} | "
            + (f"{r['answer_nll']['clean_held']:.2f} / " + " ".join(f"{v:.2f}" for v in r["answer_nll"]["G_held"])
               if "answer_nll" in r else "-")
            + f" | {r['ref_label_agreement']:.2f} | "
            f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--ref", default="/work/cmp/chg_ref2.safetensors")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "chg_convergence.jsonl"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gates-dir", default=None, help="also save each fit's gates here as NAME.safetensors")
    p.add_argument("--table", action="store_true", help="print --out as a markdown table and exit")
    p.add_argument("--compare-ref", metavar="DIR", default=None,
                   help="print the label agreement of every DIR/NAME.safetensors (saved by --gates-dir) with --ref and exit")
    args = p.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    if args.compare_ref:
        from safetensors.torch import load_file

        ref_gates = load_file(args.ref)
        for f in sorted(Path(args.compare_ref).glob("*.safetensors")):
            g = load_file(str(f))
            print(f"{f.stem}: label agreement with the reference {ref_agreement(g['G_plus'], g['G_minus'], ref_gates, 0.5):.3f}")
        return
    torch.set_num_threads(args.threads)
    ref = None
    if Path(args.ref).is_file():
        from safetensors.torch import load_file

        ref = load_file(args.ref)
    lm = load_model("smollm2")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.configs.split(","):
        row = run(lm, name, ref, args.gates_dir)
        with out.open("a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
        print(json.dumps(row, default=float), flush=True)


if __name__ == "__main__":
    main()
