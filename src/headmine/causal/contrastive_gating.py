"""Contrastive Causal Head Gating (CCHG, Nam et al. 2025 section 4.4; METHODS.md 1.6).

One gate matrix that forgets a task in one format (the FORGET set) while keeping it in a matched
format (the RETAIN set); rows of the two sets are paired by index (same underlying problem).
Official loss (``ContrastiveCHGTrainer.get_loss``), per gate set::

    lp_R, lp_F = per-row mean target log-prob on retain / forget rows
    loss = -mean(lp_R) + mean(clamp(lp_F - stopgrad(lp_R), min=-max_diff)) - lam * mean(clamp(theta, -4, 4))

with lam = +0.1 (pushes gates toward 1: the minimal removal that forgets), max_diff = 5, a fresh
uniform random start and one stage. Evaluation: per-problem token accuracy (argmax = gold on every
target token, averaged per problem) with the continuous gates applied as they are.

Built-in demonstration pair: word-mapping problems (plural, past tense, antonym, capitalisation,
capital city) as few-shot "Q:/A:" prompts vs as an instruction with one example.

Held out as the paper does (:func:`builtin_contrast_split`): the gates are fitted on some tasks and
the accuracies are measured on whole tasks the fit never saw. User files are split into fit rows and
held-out rows (:func:`split_pair_rows`); a :class:`ContrastSplit` says which was held out.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headmine.causal.engine import intervening
from headmine.causal.head_gating import (
    Batches,
    GatingData,
    LossFn,
    Progress,
    fit_stage,
    from_preset,
    gated_logprob,
    init_logits,
    load_data_file,
    prompt_target_data,
)
from headmine.causal.interventions import Gate
from headmine.core.errors import InputError
from headmine.models.loading import LoadedModel

DATA_DIR = Path(__file__).parent / "data" / "contrast_pairs"

INSTRUCTIONS = {
    "antonym": "Given an input word, generate the word with opposite meaning.",
    "capitalize": "Given an input word, generate the same word with a capital first letter.",
    "country_capital": "Given a country name, generate the capital city.",
    "present_past": "Given an input verb, generate its simple past inflection.",
    "singular_plural": "Given an input noun, generate its plural inflection.",
}


@dataclass(frozen=True, kw_only=True)
class ContrastConfig:
    """Hyper-parameters of a contrastive fit (``preset_for("paper"|"quick", **overrides)``).

    "paper": 500 updates, lr 0.1 -> 0.01, batch 64, fresh U(0, 1) gates (official). "quick": 24 updates,
    lr 0.5 -> 0.1, batch 8 and gates started near open, U(0.9, 1.0) (a CPU-budget deviation).
    ``retain_weight`` multiplies the retain term -mean(lp_R) (official: 1; a study knob, see
    bench/results/chg_convergence.md)."""

    preset: str = "paper"
    updates: int = 500
    lr: tuple[float, float] = (0.1, 0.01)
    lam: float = 0.1
    clamp: float = 4.0
    max_diff: float = 5.0
    retain_weight: float = 1.0
    batch_size: int = 64
    micro_batch: int = 64
    grad_clip: float = 1.0
    seeds: int = 1
    seed: int = 0
    data_seed: int = 0
    init_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def preset_for(cls, name: str = "paper", **overrides: Any) -> ContrastConfig:
        return from_preset(CONTRAST_PRESETS, name, "contrastive", overrides)

    def __post_init__(self) -> None:
        if self.updates < 0 or self.batch_size < 1 or self.micro_batch < 1 or self.seeds < 1:
            raise InputError("updates must be >= 0 and batch_size, micro_batch, seeds >= 1", f"got {self}")
        if self.lr[0] <= 0 or self.lr[1] <= 0:
            raise InputError(f"learning rates must be > 0, got {self.lr}", "e.g. lr=(0.1, 0.01)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONTRAST_PRESETS = {
    "paper": ContrastConfig(),
    # quick (CPU): the official uniform start closes half the heads and 30 updates cannot reopen what the
    # retain format needs (SmolLM2: retain 90% -> 18%); starting near-open (0.9-1.0) keeps it (90% -> 90%).
    "quick": ContrastConfig(preset="quick", updates=24, lr=(0.5, 0.1), batch_size=8, micro_batch=16,
                            init_range=(0.9, 1.0)),
}


@dataclass(frozen=True)
class ContrastSplit:
    """Paired retain/forget rows to fit on, paired rows held out to measure accuracy on, and what is
    held out (``heldout``, e.g. "held-out tasks: singular_plural")."""

    retain: GatingData
    forget: GatingData
    eval_retain: GatingData
    eval_forget: GatingData
    heldout: str

    def __post_init__(self) -> None:
        check_pair(self.retain, self.forget)
        check_pair(self.eval_retain, self.eval_forget)


@dataclass
class ContrastResult:
    """Gates [K, L, H] of a contrastive fit; ``curves[name]`` [updates_done, K] for loss, retain_lp,
    forget_lp, reg; ``status`` "complete" or "stopped" (non-finite loss; last good gates kept)."""

    G: torch.Tensor
    config: ContrastConfig
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    status: str = "complete"
    message: str | None = None
    duration_s: float = 0.0
    updates_done: int = 0


def check_pair(retain: GatingData, forget: GatingData) -> None:
    if len(retain) != len(forget):
        raise InputError(
            f"the retain set has {len(retain)} rows but the forget set has {len(forget)}",
            "pair the two sets row by row (row i of each = the same problem in two formats)",
        )


def contrast_loss_fn(lm: LoadedModel, retain: GatingData, forget: GatingData, cfg: ContrastConfig) -> LossFn:
    """loss_fn for :func:`fit_stage` (backward inside, micro-batched; returns the detached loss [K])."""

    def fn(theta: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k = theta.shape[0]
        per_pass = max(1, cfg.micro_batch // k)
        lp_r_all = torch.zeros(k)
        lp_f_all = torch.zeros(k)
        hinge_all = torch.zeros(k)
        for start in range(0, len(rows), per_pass):
            chunk = rows[start : start + per_pass]
            gates = torch.sigmoid(theta)
            lp_r = gated_logprob(lm, *retain.rows(chunk), gates)  # [K, b]
            (-cfg.retain_weight * lp_r.sum(1) / len(rows)).sum().backward()
            lp_f = gated_logprob(lm, *forget.rows(chunk), torch.sigmoid(theta))
            hinge = (lp_f - lp_r.detach()).clamp(min=-cfg.max_diff)
            (hinge.sum(1) / len(rows)).sum().backward()
            lp_r_all += lp_r.detach().sum(1).cpu() / len(rows)
            lp_f_all += lp_f.detach().sum(1).cpu() / len(rows)
            hinge_all += hinge.detach().sum(1).cpu() / len(rows)
        reg = theta.clamp(-cfg.clamp, cfg.clamp).mean(dim=(1, 2))
        if cfg.lam:
            (-cfg.lam * reg).sum().backward()
        loss = -cfg.retain_weight * lp_r_all + hinge_all - cfg.lam * reg.detach().cpu()
        return loss, {"retain_lp": lp_r_all, "forget_lp": lp_f_all, "reg": reg.detach().cpu()}

    return fn


def fit_contrastive(lm: LoadedModel, retain: GatingData, forget: GatingData, config: ContrastConfig | None = None,
                    *, progress: Progress | None = None) -> ContrastResult:
    """Fit the contrastive gates (one stage from a fresh uniform start)."""
    cfg = config or ContrastConfig()
    check_pair(retain, forget)
    if any(p.requires_grad for p in lm.model.parameters()):
        raise InputError("the model has trainable parameters; CCHG needs a frozen model", "call requires_grad_(False)")
    for d in (retain, forget):
        lm.check_length(int(d.attention_mask.sum(1).max()))
    g = lm.geometry
    start = time.perf_counter()
    theta0 = init_logits(cfg.seeds, g.n_layers, g.n_heads, seed=cfg.seed, init_range=cfg.init_range)
    res = fit_stage(contrast_loss_fn(lm, retain, forget, cfg), theta0, updates=cfg.updates, lr=cfg.lr,
                    grad_clip=cfg.grad_clip, batches=Batches(len(retain), cfg.batch_size, cfg.data_seed + 7),
                    stage="contrast", progress=progress)
    return ContrastResult(G=torch.sigmoid(res.theta), config=cfg, curves=res.curves,
                          status="stopped" if res.stopped else "complete", message=res.stopped,
                          duration_s=time.perf_counter() - start, updates_done=res.done)


@torch.no_grad()
def token_accuracy(lm: LoadedModel, data: GatingData, gates: torch.Tensor | None = None, *,
                   micro_batch: int = 32) -> torch.Tensor:
    """Per-problem token accuracy [rows]: fraction of target tokens where the argmax is the gold token.
    ``gates`` [L, H] (continuous values applied as they are) or None for the plain model."""
    out = []
    for start in range(0, len(data), micro_batch):
        ids, att, lmask = data.rows(range(start, min(start + micro_batch, len(data))))
        ids, att, lmask = ids.to(lm.device), att.to(lm.device), lmask.to(lm.device)
        ivs = [] if gates is None else [Gate(factors=gates.to(lm.device))]
        with intervening(lm, ivs):
            logits = lm.model(input_ids=ids, attention_mask=att).logits
        ids, lmask = ids.to(logits.device), lmask.to(logits.device)  # the last layer's device
        hit = (logits[:, :-1].argmax(-1) == ids[:, 1:]) & lmask[:, 1:]
        out.append(hit.sum(1).float().cpu() / lmask[:, 1:].sum(1).clamp_min(1).float().cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- built-in pair
def word_table(name: str) -> list[tuple[str, str]]:
    path = DATA_DIR / f"{name}.tsv"
    if not path.is_file():
        raise InputError(f"no built-in word-mapping table {name!r}", f"use one of {sorted(INSTRUCTIONS)}")
    with path.open(encoding="utf-8") as fh:
        return [(r[0], r[1]) for r in csv.reader(fh, delimiter="\t") if len(r) >= 2]


def _qa(x: str, y: str | None = None) -> str:
    return f"Q: {x}\nA:" + ("" if y is None else f" {y}")


def contrast_pair_prompts(*, tasks: tuple[str, ...] = tuple(INSTRUCTIONS), shots: int = 5, n_pool: int = 10,
                          split: str = "train", seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """(prompt, target) lists ``{"fewshot": [...], "instruction": [...]}``, paired row by row.

    Per task the first ``n_pool`` table rows are the example pool; the remaining rows are split by
    alternation into train (even) and eval (odd) queries. Few-shot: ``shots`` pool examples as
    "Q: x\\nA: y" blocks separated by blank lines, then the query. Instruction: the task's instruction,
    one pool example, then the query. Targets are " y" (leading space).
    """
    if split not in ("train", "eval", "all"):
        raise InputError(f"unknown split {split!r}", "use train, eval or all")
    rnd = random.Random(seed)
    few, inst = [], []
    for task in tasks:
        table = word_table(task)
        pool, rest = table[:n_pool], table[n_pool:]
        queries = rest if split == "all" else rest[0::2] if split == "train" else rest[1::2]
        for x, y in queries:
            ex = rnd.sample(pool, min(shots, len(pool)))
            few.append(("\n\n".join([_qa(a, b) for a, b in ex] + [_qa(x)]), f" {y}"))
            inst.append((f"{INSTRUCTIONS[task]}\n\n" + "\n\n".join([_qa(*ex[0]), _qa(x)]), f" {y}"))
    return {"fewshot": few, "instruction": inst}


def builtin_contrast_split(lm: LoadedModel, *, forget: str = "instruction", heldout_tasks: Sequence[str] = ("singular_plural",),
                           tasks: Sequence[str] = tuple(INSTRUCTIONS), shots: int = 5, seed: int = 0) -> ContrastSplit:
    """The built-in pair with whole tasks held out (the paper's protocol): the gates are fitted on the
    other ``tasks`` and the accuracies are measured on ``heldout_tasks``. ``forget`` is the format to
    forget (instruction | fewshot); every query of a task is used (its first rows are the example pool)."""
    if forget not in ("instruction", "fewshot"):
        raise InputError(f"unknown format {forget!r}", "forget 'instruction' or 'fewshot'")
    unknown = [t for t in (*tasks, *heldout_tasks) if t not in INSTRUCTIONS]
    if unknown:
        raise InputError(f"unknown built-in task(s) {unknown}", f"choose from {sorted(INSTRUCTIONS)}")
    fit_tasks = tuple(t for t in tasks if t not in heldout_tasks)
    if not fit_tasks or not heldout_tasks:
        raise InputError(f"need at least one task to fit on and one to hold out (fit {list(fit_tasks)}, "
                         f"held out {list(heldout_tasks)})", f"hold out one or more of {sorted(INSTRUCTIONS)}")
    keep = "fewshot" if forget == "instruction" else "instruction"
    fit = contrast_pair_prompts(tasks=fit_tasks, shots=shots, split="all", seed=seed)
    held = contrast_pair_prompts(tasks=tuple(heldout_tasks), shots=shots, split="all", seed=seed + 1)
    return ContrastSplit(
        retain=prompt_target_data(lm, fit[keep], source=f"builtin:{keep}:{'+'.join(fit_tasks)}"),
        forget=prompt_target_data(lm, fit[forget], source=f"builtin:{forget}:{'+'.join(fit_tasks)}"),
        eval_retain=prompt_target_data(lm, held[keep], source=f"builtin:{keep}:{'+'.join(heldout_tasks)}"),
        eval_forget=prompt_target_data(lm, held[forget], source=f"builtin:{forget}:{'+'.join(heldout_tasks)}"),
        heldout=f"held-out tasks: {', '.join(heldout_tasks)}")


def select_rows(data: GatingData, rows: Sequence[int]) -> GatingData:
    """The given rows of ``data`` (in that order), padding kept."""
    idx = torch.as_tensor(list(rows), dtype=torch.long)
    return GatingData(input_ids=data.input_ids[idx], attention_mask=data.attention_mask[idx],
                      loss_mask=data.loss_mask[idx], texts=None if data.texts is None else [data.texts[i] for i in rows],
                      source=data.source)


def split_pair_rows(retain: GatingData, forget: GatingData, *, heldout_frac: float = 0.25, seed: int = 0) -> ContrastSplit:
    """Split paired rows (e.g. user files) into fit rows and held-out rows: a random ``heldout_frac``
    of the pairs (at least one, at most all but one; the pairing is kept) is never fitted on."""
    check_pair(retain, forget)
    n = len(retain)
    if n < 2:
        raise InputError(f"{n} paired row: need at least 2 to hold some out", "give more rows")
    if not 0 < heldout_frac < 1:
        raise InputError(f"heldout_frac must be between 0 and 1, got {heldout_frac}", "e.g. 0.25")
    order = random.Random(seed).sample(range(n), n)
    n_held = min(n - 1, max(1, round(heldout_frac * n)))
    fit, held = sorted(order[n_held:]), sorted(order[:n_held])
    return ContrastSplit(select_rows(retain, fit), select_rows(forget, fit), select_rows(retain, held),
                         select_rows(forget, held), heldout=f"held-out rows: {n_held} of {n} (seed {seed})")


def load_pair_files(lm: LoadedModel, retain: str | Path, forget: str | Path, *, limit: int | None = None
                    ) -> tuple[GatingData, GatingData]:
    """Retain / forget JSONL (or text) files, checked to pair row by row."""
    r, f = load_data_file(lm, retain, limit=limit), load_data_file(lm, forget, limit=limit)
    check_pair(r, f)
    return r, f
