"""Head pruning from Causal Head Gating (issue 13 §6): ``headmine prune``, kind ``prune``.

What it does:

1. A causal task's prompts (default IOI) are split into fit and held-out parts by whole groups
   (IOI: by template; other tasks: per prompt) with a fixed seed (:func:`group_split`).
2. CHG (Nam et al. 2025, :mod:`headmine.causal.head_gating`, the project's existing fit) runs on the
   first ``chg_rows`` fit prompts; heads are ordered by the irrelevance score I = G+ (1 - G-),
   mean over seeds, most irrelevant first. The fit's convergence verdict is carried into the result,
   its notes and the artifact: the order of a fit that did NOT converge is evidence, not a finding
   (SmolLM2 IOI under the ``quick`` preset does not converge; the toy induction model's fit does).
3. Two baseline orders, from the same fit prompts: random permutations (``n_random`` of them, fixed
   seed) and attribution patching (Nanda 2023, :mod:`headmine.causal.attribution_patching`): heads
   with the smallest estimated |effect| of patching their corrupted output first.
4. For each number of removed heads k in ``ks``, heads are removed (zero ablation of z, the same as
   zeroed o_proj columns) in each order, and measured on the HELD-OUT prompts: the task metric
   (IOI: logit difference; otherwise the answer log-prob) and top-1 accuracy, each paired against the
   unpruned model, plus the next-token loss on the project's corpus windows. Intervals are percentile
   bootstraps over held-out prompts (corpus: over windows); random order is averaged over the draws per
   item (:func:`random_baseline_row`); "CHG minus random" and "CHG minus attribution" rows are paired
   differences.
5. The saved k (the artifact's heads) is chosen on the FIT split only: the largest k whose fit-split
   top-1 accuracy drops by at most ``max_drop``.

Removal is zeroing o_proj input columns, not deleting heads (HF can delete heads only in some
families and not in GQA groups); :func:`save_pruned` writes such a model with ``save_pretrained``
(safetensors) so that plain ``AutoModelForCausalLM.from_pretrained(dir)`` loads it, and its logits equal
those of the in-memory :class:`~headmine.causal.Zero` intervention.

Data: the task's own prompts (IOI: 15 templates x the project's single-token names, places and
objects; see :mod:`headmine.tasks.ioi`); ``n`` prompts, about a third of the groups held out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from headmine.apply.artifact import HeadArtifact, geometry_of
from headmine.apply.evaluation import (
    corpus_windows,
    difference_row,
    effect_row,
    group_split,
    random_baseline_row,
)
from headmine.apply.registry import Application, register_application
from headmine.apply.result import ApplyResult
from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.engine import intervening
from headmine.causal.head_gating import CHGConfig, fit_chg, from_prompt_set
from headmine.causal.interventions import Zero
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError, TaskError
from headmine.core.ids import HeadId
from headmine.core.tables import head_matrix_frame
from headmine.tasks.registry import load_task

NAME = "prune"
TITLE = "Head pruning from Causal Head Gating"
PAPER = "Nam et al. 2025 (CHG); orders compared with attribution patching (Nanda 2023) and random"


@dataclass(frozen=True)
class PruneConfig:
    """Settings of one ``prune`` run (defaults sized for SmolLM2 on 2 CPU cores, a few minutes).

    ``ks`` are fractions of all heads (< 1) or head counts (>= 1); 0 is always added. ``chg_overrides``
    override fields of the CHG preset (e.g. ``updates``, ``seeds``).
    """

    task: str = "ioi"
    n: int = 48
    heldout_frac: float = 0.34
    chg_preset: str = "quick"
    chg_rows: int | None = None
    chg_seeds: int | None = None
    chg_overrides: dict[str, Any] = field(default_factory=dict)
    ks: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    n_random: int = 3
    max_drop: float = 0.05
    corpus_n: int = 8
    corpus_len: int = 64
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 4:
            raise InputError(f"n={self.n} prompts are too few to split", "use n >= 4")
        if self.n_random < 1:
            raise InputError("n_random must be at least 1", "use e.g. 3")
        if any(k < 0 for k in self.ks):
            raise InputError(f"ks {self.ks} has a negative entry", "give fractions of all heads (0.1) or counts (5)")
        if not 0.0 <= self.max_drop <= 1.0:
            raise InputError(f"max_drop={self.max_drop} is not an accuracy drop in [0, 1]", "use e.g. 0.05")


def head_counts(ks: Sequence[float], total: int) -> list[int]:
    """Sorted distinct head counts: fractions (< 1) of ``total`` rounded, counts (>= 1) as given; 0 first."""
    out = {0}
    for k in ks:
        c = round(k * total) if k < 1 else int(k)
        if c > total:
            raise InputError(f"cannot remove {c} heads of {total}", f"use counts up to {total}")
        out.add(c)
    return sorted(out)


def subset(prompts: Any, idx: Sequence[int]) -> Any:
    """The PromptSet restricted to items ``idx`` (in that order)."""
    return replace(prompts, items=tuple(prompts.items[i] for i in idx))


def task_scores(lm: Any, prompts: Any, heads: Sequence[HeadId], *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(metric [B], top-1 correct [B]) of the task's prompts with ``heads`` removed (zero ablation)."""
    metric_vals, correct = [], []
    for start in range(0, len(prompts), batch_size):
        batch = subset(prompts, range(start, min(start + batch_size, len(prompts)))).clean_batch()
        metric = AnswerMetric.from_batch(batch, prompts.metric if prompts.metric in ("logit_diff", "prob") else None)
        ivs = [Zero(heads=tuple(heads))] if heads else []
        with torch.no_grad(), intervening(lm, ivs):
            logits = lm.forward(batch.input_ids, batch.attention_mask)
        end = metric.end_logits(logits)
        metric_vals.append(metric.from_end_logits(end).cpu().double().numpy())
        correct.append((end.argmax(-1).cpu() == metric.target_id).double().numpy())
    return np.concatenate(metric_vals), np.concatenate(correct)


def window_losses(lm: Any, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Mean next-token loss (nats) of each corpus window [n] under whatever edit is active."""
    out = []
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size].to(lm.device)
        with torch.no_grad():
            logits = lm.forward(ids, torch.ones_like(ids)).float()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(logits.device),
                                               reduction="none")
        out.append(ce.mean(1).cpu().double().numpy())
    return np.concatenate(out)


def corpus_scores(lm: Any, windows: torch.Tensor | None, heads: Sequence[HeadId]) -> np.ndarray:
    """Per-window corpus loss with ``heads`` removed (empty when there are no windows)."""
    if windows is None:
        return np.zeros(0)
    with intervening(lm, [Zero(heads=tuple(heads))]) if heads else nullcontext():
        return window_losses(lm, windows)


def irrelevance_order(I: torch.Tensor) -> list[HeadId]:  # noqa: E741
    """Heads by irrelevance [L, H], most irrelevant first (ties: lower layer, then head, first)."""
    _n_layers, n_heads = I.shape
    flat = I.flatten().double().numpy()
    idx = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    return [HeadId(i // n_heads, i % n_heads) for i in idx]


def attribution_order(effects: torch.Tensor) -> list[HeadId]:
    """Heads by |mean estimated effect| [L, H], smallest (least important) first."""
    _n_layers, n_heads = effects.shape
    flat = effects.abs().flatten().double().numpy()
    idx = sorted(range(flat.size), key=lambda i: (flat[i], i))
    return [HeadId(i // n_heads, i % n_heads) for i in idx]


def save_pruned(lm: Any, heads: Sequence[HeadId], path: str | Path) -> Path:
    """Write the model with ``heads`` removed (their o_proj input columns zeroed) to folder ``path``
    with ``save_pretrained`` (safetensors) and the tokenizer when there is one; plain
    ``AutoModelForCausalLM.from_pretrained(path)`` loads it. The in-memory model is restored afterwards."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder", "give a folder for the pruned model")
    if not out.parent.exists():
        raise InputError(f"cannot save the pruned model: folder {out.parent} does not exist", "create it first")
    g = lm.geometry
    axis = lm.adapter.out_proj_in_axis
    saved: dict[int, torch.Tensor] = {}
    by_layer: dict[int, list[int]] = {}
    for h in heads:
        g.check_head(h.layer, h.head)
        by_layer.setdefault(h.layer, []).append(h.head)
    try:
        with torch.no_grad():
            for layer, hs in by_layer.items():
                w = lm.adapter.out_proj(layer).weight
                saved[layer] = w.detach().clone()
                cols = torch.cat([torch.arange(h * g.d_head, (h + 1) * g.d_head) for h in hs]).to(w.device)
                w.index_fill_(axis, cols, 0.0)
        lm.model.save_pretrained(out, safe_serialization=True)
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(out)
    except OSError as err:
        raise InputError(f"cannot save the pruned model to {out}: {err}", "check the path and free disk space") from err
    finally:
        with torch.no_grad():
            for layer, w0 in saved.items():
                lm.adapter.out_proj(layer).weight.copy_(w0)
    return out


class PruneApplication(Application):
    name = NAME
    title = TITLE
    paper = PAPER

    @contextmanager
    def apply(self, lm: Any, artifact: HeadArtifact) -> Iterator[None]:
        """Zero the artifact's heads (the pruned ones) in every forward pass."""
        with intervening(lm, [Zero(heads=tuple(artifact.heads))]) if artifact.heads else nullcontext():
            yield


APP = register_application(PruneApplication())


@dataclass
class PruneRun:
    """What :func:`run_prune` returns: the atlas result, the artifact, and the orders."""

    result: ApplyResult
    artifact: HeadArtifact
    orders: dict[str, list[HeadId]] = field(default_factory=dict)
    converged: bool = False


def run_prune(lm: Any, cfg: PruneConfig | None = None, *, log: Any = None) -> PruneRun:
    """Fit CHG on the fit split, order heads, prune in each order and measure on held-out prompts."""
    cfg = cfg or PruneConfig()
    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    g = lm.geometry
    if lm.tokenizer is None:
        raise InputError(f"{lm.name} has no tokenizer", "prune needs a model with a tokenizer")
    prompts = load_task(cfg.task, lm.tokenizer, n=cfg.n, seed=cfg.seed)
    groups = [it.meta.get("template", i) for i, it in enumerate(prompts.items)]
    fit_idx, held_idx = group_split(groups, heldout_frac=cfg.heldout_frac, seed=cfg.seed)
    fit_set, held_set = subset(prompts, fit_idx), subset(prompts, held_idx)
    if not fit_set.has_corrupted:
        raise InputError(f"task {cfg.task!r} has no corrupted prompts", "attribution order needs clean/corrupted pairs: "
                         "use ioi, induction or another task with corruptions")

    # CHG on the fit split
    chg_over: dict[str, Any] = dict(cfg.chg_overrides)
    if cfg.chg_seeds is not None:
        chg_over["seeds"] = cfg.chg_seeds
    chg_cfg = CHGConfig.preset_for(cfg.chg_preset, **chg_over)
    rows = min(len(fit_set), cfg.chg_rows or chg_cfg.rows)
    data = from_prompt_set(fit_set, n_ctx=g.n_ctx).subset(rows)
    say(f"fitting CHG ({cfg.chg_preset}, {chg_cfg.seeds} seeds) on {rows} fit prompts")
    chg = fit_chg(lm, data, chg_cfg)
    verdict = chg.convergence.verdict if chg.convergence is not None else "not assessed"
    reasons = "; ".join(chg.convergence.reasons) if chg.convergence is not None else ""
    I = chg.I.mean(0)  # noqa: E741
    say("attribution patching on the fit prompts")
    clean, corr = fit_set.clean_batch(), fit_set.corrupted_batch()
    metric = AnswerMetric.from_batch(clean, prompts.metric if prompts.metric in ("logit_diff", "prob") else None)
    attr = attribution_patching(lm, clean.input_ids, clean.attention_mask, corr.input_ids, corr.attention_mask, metric)
    attr_mean = attr.values.mean(-1)
    rng = random.Random(cfg.seed)
    all_heads = g.heads()
    orders: dict[str, list[HeadId]] = {"chg_irrelevance": irrelevance_order(I), "attribution": attribution_order(attr_mean)}
    randoms = [rng.sample(all_heads, len(all_heads)) for _ in range(cfg.n_random)]
    ks = head_counts(cfg.ks, g.n_total_heads)

    notes: list[str] = []
    try:
        windows = corpus_windows(lm, n=cfg.corpus_n, seq_len=cfg.corpus_len, seed=cfg.seed) if cfg.corpus_n else None
    except TaskError as err:  # toy vocabularies cannot encode the corpus
        windows = None
        notes.append(f"no corpus loss: {err.problem}")
    base_m, base_c = task_scores(lm, held_set, [], batch_size=cfg.batch_size)
    base_w = corpus_scores(lm, windows, [])
    fit_base_c = task_scores(lm, fit_set, [], batch_size=cfg.batch_size)[1]
    mname = "logit_diff" if metric.kind == "logit_diff" else metric.kind
    t_metric: list[dict[str, Any]] = []
    t_acc: list[dict[str, Any]] = []
    t_corpus: list[dict[str, Any]] = []
    t_diff: list[dict[str, Any]] = []
    selection: list[dict[str, Any]] = []
    chosen_k = 0
    for k in ks:
        say(f"removing {k} heads")
        res: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for name, order in orders.items():
            heads = order[:k]
            m, c = task_scores(lm, held_set, heads, batch_size=cfg.batch_size)
            res[name] = (m, c, corpus_scores(lm, windows, heads))
        rnd = [(*task_scores(lm, held_set, r[:k], batch_size=cfg.batch_size), corpus_scores(lm, windows, r[:k]))
               for r in randoms]
        fit_c = task_scores(lm, fit_set, orders["chg_irrelevance"][:k], batch_size=cfg.batch_size)[1]
        drop = float(fit_base_c.mean() - fit_c.mean())
        selection.append({"k": k, "fit_top1": float(fit_c.mean()), "fit_top1_drop": drop, "ok": drop <= cfg.max_drop})
        if drop <= cfg.max_drop:
            chosen_k = max(chosen_k, k)
        for name in orders:
            m, c, w = res[name]
            t_metric.append(effect_row("heldout", f"{name}, k={k}", mname, m, base_m, seed=cfg.seed, k=k, order=name))
            t_acc.append(effect_row("heldout", f"{name}, k={k}", "top1", c, base_c, seed=cfg.seed, k=k, order=name))
            if windows is not None:
                t_corpus.append(effect_row("corpus", f"{name}, k={k}", "loss", w, base_w, seed=cfg.seed, k=k, order=name))
        t_metric.append(random_baseline_row("heldout", f"random, k={k}", mname, [r[0] for r in rnd], base_m,
                                            seed=cfg.seed, k=k, order="random"))
        t_acc.append(random_baseline_row("heldout", f"random, k={k}", "top1", [r[1] for r in rnd], base_c,
                                         seed=cfg.seed, k=k, order="random"))
        if windows is not None:
            t_corpus.append(random_baseline_row("corpus", f"random, k={k}", "loss", [r[2] for r in rnd], base_w,
                                                seed=cfg.seed, k=k, order="random"))
        if k > 0:
            rnd_m = np.stack([r[0] for r in rnd]).mean(0)
            t_diff.append(difference_row("heldout", f"CHG - random, k={k}", mname, res["chg_irrelevance"][0], rnd_m,
                                         seed=cfg.seed, k=k))
            t_diff.append(difference_row("heldout", f"CHG - attribution, k={k}", mname, res["chg_irrelevance"][0],
                                         res["attribution"][0], seed=cfg.seed, k=k))

    conv_note = ("the CHG fit converged" if chg.converged else
                 f"the CHG fit did NOT converge ({reasons or verdict}): its irrelevance order is evidence, not a finding")
    notes.insert(0, conv_note)
    for r in t_diff:
        if not r["significant"]:
            notes.append(f"not significant: {r['condition']} ({mname} difference {r['delta']:+.3f}, "
                         f"95% CI [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}])")
    removed = orders["chg_irrelevance"][:chosen_k]
    chosen = {"k": chosen_k, "order": "chg_irrelevance", "max_drop": cfg.max_drop, "chg_converged": chg.converged,
              "chg_verdict": verdict}
    scores = pd.concat([head_matrix_frame(I, method="prune", metric="chg_I", n=chg.G.shape[0]),
                        head_matrix_frame(attr_mean, method="prune", metric="attribution_effect", n=len(fit_set))],
                       ignore_index=True)
    convergence = chg.convergence.to_dict() if chg.convergence is not None else {}
    data_info = {"task": cfg.task, "n": len(prompts), "fit": len(fit_set), "heldout": len(held_set), "chg_rows": rows,
                 "groups": "IOI template" if "template" in prompts.items[0].meta else "prompt",
                 "corpus_windows": 0 if windows is None else int(windows.shape[0]), "corpus_len": cfg.corpus_len}
    result = ApplyResult(
        kind=NAME, title=TITLE, paper=PAPER, model=lm.name, model_info=lm.model_info(), config=asdict(cfg),
        heads=list(removed), chosen=chosen,
        tables={f"held-out {mname} vs heads removed": t_metric, "held-out top-1 accuracy vs heads removed": t_acc,
                "corpus loss vs heads removed": t_corpus, "CHG order against the baselines (paired)": t_diff},
        selection=selection, head_scores=scores, notes=notes,
        data=data_info | {"chg_convergence": convergence, "chg_fit_s": chg.duration_s},
        duration_s=time.perf_counter() - t0)
    artifact = HeadArtifact(
        kind=NAME, model=lm.name, geometry=geometry_of(g), heads=tuple(removed),
        params={"k": chosen_k, "order": "chg_irrelevance", "removal": "zero o_proj input columns"},
        tensors={"chg_I": I.float(), "attribution_effect": attr_mean.float()},
        info={"chg_converged": chg.converged, "chg_verdict": verdict, "task": cfg.task,
              "order": [str(h) for h in orders["chg_irrelevance"]]})
    result.duration_s = time.perf_counter() - t0
    return PruneRun(result=result, artifact=artifact, orders=orders, converged=chg.converged)
