"""`headmine factual MODEL [--relation R ...]`: trajectory, argument-passing heads, MLP decomposition,
final-layer suppression and the mitigation's before/after table; everything lands in the atlas."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from headmine.atlas import write_job
from headmine.cli.common import (
    Device,
    Dtype,
    TrustRemoteCode,
    check_atlas,
    console,
    friendly_errors,
    load_with_status,
)
from headmine.pipeline.factual import FactualConfig, run_factual


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def _ci(d: dict, key: str) -> str:
    lo, hi = d[f"{key}_ci"]
    return f"{d[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def register(app: typer.Typer) -> None:
    @app.command(name="factual")
    @friendly_errors
    def factual_cmd(
        model: str = typer.Argument("smollm2", help="embedded name, .gguf file, model folder or hub id"),
        device: Device = "cpu", dtype: Dtype = "float32", trust_remote_code: TrustRemoteCode = False,
        relation: list[str] = typer.Option(None, "--relation", "-r", help="built-in relation names or relation files (repeat or comma-separate); default all built-ins"),
        heldout: list[str] = typer.Option(None, "--heldout", help="relations held out from the mitigation's selection (default: the last one)"),
        n: int = typer.Option(16, "--n", help="prompts per relation and prompt style (zero-shot, few-shot)"),
        shots: int = typer.Option(3, "--shots", help="solved examples in the few-shot prompts (0 = zero-shot only)"),
        top_k: int = typer.Option(3, "--top-k", help="argument-passing heads in the causal check"),
        max_cost: float = typer.Option(0.05, "--max-cost", help="largest corpus loss increase (nats/token) a mitigation may cost"),
        atlas: Path = typer.Option(None, "--atlas", help="write the run into this atlas (SQLite) file"),
        save: Path = typer.Option(None, "--save", help="save the chosen mitigation here (.json + .safetensors)"),
        seed: int = typer.Option(0, "--seed"),
        batch_size: int = typer.Option(8, "--batch-size"),
    ) -> None:
        """Factual recall mechanisms (Lv et al. 2024 style) on MODEL, with a held-out-tested mitigation."""
        check_atlas(atlas)
        lm = load_with_status(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        cfg = FactualConfig(relations=_split(relation), heldout_relations=_split(heldout), n_per_relation=n, shots=shots,
                            top_k=top_k, max_cost=max_cost, seed=seed, batch_size=batch_size)
        with console.status("running the factual-recall analysis"):
            rep = run_factual(lm, cfg, log=console.log)
        g = lm.geometry

        t = Table(title=f"answer trajectory (logit lens), {rep.trajectory['n']} prompts")
        for col in ("group", "n", "p(L-1)", "p(final)", "top-1 (L-1)", "top-1 final", "last-layer drop share"):
            t.add_column(col)
        for name, s in [("all", rep.trajectory), *rep.trajectory_groups.items()]:
            t.add_row(escape(name), str(s["n"]), f"{s['mean_prob_penultimate']:.3f}", f"{s['mean_prob_final']:.3f}",
                      f"{s['top1_penultimate']:.2f}", f"{s['top1_final']:.2f}", f"{s['drop_share_last']:.2f}")
        console.print(t)
        probs = rep.trajectory["mean_prob_by_layer"]
        console.print("mean p(answer) after each layer: " + " ".join(f"{p:.2f}" for p in probs[1:]))

        a = rep.argument
        t = Table(title=f"argument-passing heads (path patching with subject swaps, {a['n']} pairs)")
        for col in ("head", "path effect", "attn -> subject", f"decode acc (chance {a['decode_chance']:.2f})"):
            t.add_column(col)
        for row in a["table"]:
            t.add_row(row["head"], f"{row['path_effect']:+.3f}", f"{row['attn_subject']:.2f}", f"{row['decode_acc']:.2f}")
        console.print(t)
        c = a["check"]
        console.print(f"causal check on {c['split']}, {c['n_check']} pairs: patching top-{c['k']} {c['top_heads']} carries {c['top_k_effect']:+.3f} of the swap "
                      f"effect; {c['k']} random heads: {c['random_k_effect_mean']:+.3f}; difference "
                      f"{c['top_minus_random']:+.3f} [95% CI {c['top_minus_random_ci'][0]:+.3f}, {c['top_minus_random_ci'][1]:+.3f}]")

        d = rep.decomposition
        t = Table(title=f"MLP decomposition, layer {d['layer']}: R2 {d['r2']:.3f} (intercept only {d['r2_intercept_only']:.3f})")
        t.add_column("regressor")
        t.add_column("beta")
        for h, b in d["beta"].items():
            t.add_row(h, f"{b:+.3f}")
        console.print(t)
        t = Table(title="intercept decoded through the unembedding")
        for col in ("relation", "answer-class AUROC", "p", "top tokens"):
            t.add_column(col)
        for r, au in d["intercept_auroc"].items():
            t.add_row(escape(r), f"{au:.3f}", f"{d['intercept_p'][r]:.2g}", escape(" ".join(repr(x) for x in d["intercept_top_tokens"][r][:6])))
        console.print(t)
        best = max(rep.mlp_scan, key=lambda x: x["intercept_auroc"])
        console.print(f"layer scan: highest intercept answer-class AUROC at mlp{best['layer']} ({best['intercept_auroc']:.3f}, R2 {best['r2']:.3f})")

        s = rep.suppression
        t = Table(title=f"final layer {s['layer']}: direct effects on the answer (frequency proxy: {s['frequency_proxy']})")
        for col in ("component", "attn -> first token", "d log p(answer)", "DLA", "corr with frequency", "promotes"):
            t.add_column(col)
        for row in s["components"]:
            ft = row["first_token_attention"]
            t.add_row(row["component"], "-" if ft != ft else f"{ft:.2f}", f"{row['answer_dlogp']:+.3f}", f"{row['answer_dla']:+.3f}",
                      f"{row['frequency_corr']:+.3f}", escape(" ".join(repr(x) for x in s["top_tokens"][row["component"]][:5])))
        console.print(t)

        m = rep.mitigation
        sel = m["selection"]
        t = Table(title=f"mitigation: {escape(m['mitigation'])} (every choice on the {sel['n_prompts']} training prompts, "
                        f"suppressors {', '.join(sel['suppressors']) or 'none'}; cost {m['cost']:+.4f} nats/token "
                        f"on held-out corpus windows)")
        for col in ("split", "n", "top-1 before", "top-1 after", "d top-1 [95% CI]", "p before", "p after", "d p [95% CI]"):
            t.add_column(col)
        for split in ("train", "heldout_facts", "heldout_relations"):
            if split in m:
                x = m[split]
                t.add_row(split, str(x["n"]), f"{x['top1_before']:.3f}", f"{x['top1_after']:.3f}", _ci(x, "dtop1"),
                          f"{x['prob_before']:.3f}", f"{x['prob_after']:.3f}", _ci(x, "dprob"))
        console.print(t)
        if rep.chosen is not None and rep.chosen.is_identity:
            console.print("[yellow]no candidate improved the training facts within the cost budget: no mitigation[/]")
        if save is not None and rep.chosen is not None:
            js, st = rep.chosen.save(save)
            console.print(f"saved mitigation to {js}" + (f" and {st}" if st else ""))
        if atlas is not None:
            run_id = write_job(rep, atlas)
            console.print(f"atlas: run {run_id} in {atlas} ({len(rep.scores)} scores, {len(rep.inputs)} prompts)")
        console.print(f"[dim]{g.n_layers} layers x {g.n_heads} heads; times: "
                      + ", ".join(f"{k} {v:.0f}s" for k, v in rep.timings.items()) + "[/]")
