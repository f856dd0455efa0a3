"""Fitting gates: Adam on gate logits for K seeds at once (:func:`fit_stage`), and the three CHG
stages (:func:`fit_chg`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from headmine.causal.head_gating.config import CHGConfig
from headmine.causal.head_gating.convergence import StageDiagnostics, assess, stage_diagnostics
from headmine.causal.head_gating.data import GatingData
from headmine.causal.head_gating.logprob import gated_logprob, mean_logprob
from headmine.causal.head_gating.results import CHGResult
from headmine.core.errors import InputError, NumericalError
from headmine.models.loading import LoadedModel

#: the share of a stage's updates over which convergence is judged (its last 10%).
TAIL_FRACTION = 0.1

#: on_update(stage, step (1-based), total, loss (mean over seeds)) -- e.g. a rich progress bar.
Progress = Callable[[str, int, int, float], None]

#: loss_fn(theta [K, L, H], rows) -> (per-seed loss [K], named parts [K]); does its own backward.
LossFn = Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def init_logits(k: int, n_layers: int, n_heads: int, *, seed: int = 0, init_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """theta [K, L, H] = logit(U(lo, hi)); seed k uses generator ``seed + k`` (independent of K)."""
    lo, hi = init_range
    out = []
    for i in range(k):
        g = torch.Generator().manual_seed(int(seed) + i)
        u = lo + (hi - lo) * torch.rand(n_layers, n_heads, generator=g)
        out.append(torch.logit(u.clamp(1e-4, 1 - 1e-4)))
    return torch.stack(out)


class Batches:
    """Endless shuffled mini-batches of row indices (each epoch a new permutation)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.bs = n, min(batch_size, n)
        self.g = torch.Generator().manual_seed(seed)
        self.perm: list[int] = []

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.bs:
            if not self.perm:
                self.perm = torch.randperm(self.n, generator=self.g).tolist()
            out.append(self.perm.pop())
        return out


def _clip_per_seed(grad: torch.Tensor, max_norm: float) -> None:
    if max_norm and max_norm > 0:
        norms = grad.flatten(1).norm(dim=1)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        grad.mul_(scale.view(-1, *([1] * (grad.dim() - 1))))


def tail_start(updates: int, fraction: float = TAIL_FRACTION) -> int:
    """The update after which the last ``fraction`` of ``updates`` begins (at least one update)."""
    return max(0, updates - max(1, round(fraction * updates)))


@dataclass
class StageFit:
    """One stage's result: the gate logits, the per-update curves, updates done, why it stopped, and
    ``theta_tail``: the logits after update :func:`tail_start` (``updates``), where the last 10% of the
    stage's updates begins (the convergence diagnostics compare the two)."""

    theta: torch.Tensor
    curves: dict[str, np.ndarray]
    done: int
    stopped: str | None
    theta_tail: torch.Tensor | None = None


def fit_stage(
    loss_fn: LossFn,
    theta0: torch.Tensor,
    *,
    updates: int,
    lr: tuple[float, float],
    grad_clip: float,
    batches: Batches,
    stage: str,
    progress: Progress | None = None,
    bound: float | None = None,
) -> StageFit:
    """Adam on theta [K, ...] with a linear lr decay; ``loss_fn(theta, rows)`` -> (per-seed loss [K], parts).

    Curves: the loss, its parts, and ``grad_norm`` (per seed, before clipping). A non-finite loss or
    gradient stops the stage with the last good theta. ``bound``: project theta into [-bound, bound]
    after every update (and at the start), so it never leaves the range where a clamped regulariser
    still pulls on it (:attr:`CHGConfig.project`).
    """
    theta = theta0.detach().clone()
    if bound is not None:
        theta.clamp_(-bound, bound)
    theta.requires_grad_(True)
    tail_at = tail_start(updates)
    theta_tail = theta0.detach().clone()
    opt = torch.optim.Adam([theta], lr=lr[0])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 + (lr[1] / lr[0] - 1.0) * min(i, max(updates - 1, 1)) / max(updates - 1, 1)
    )
    log: dict[str, list[np.ndarray]] = {}
    stopped = None
    done = 0
    for step in range(updates):
        rows = batches.next()
        opt.zero_grad(set_to_none=True)
        try:
            loss, parts = loss_fn(theta, rows)
        except NumericalError as err:  # the forward itself went non-finite (it names the layer and heads)
            stopped = f"non-finite forward at stage {stage}, update {step + 1}: {err.problem}; kept the gates of update {step}"
            break
        if not torch.isfinite(loss).all() or theta.grad is None or not torch.isfinite(theta.grad).all():
            stopped = f"non-finite loss at stage {stage}, update {step + 1}; kept the gates of update {step}"
            break
        parts = {**parts, "grad_norm": theta.grad.detach().flatten(1).norm(dim=1).cpu()}
        _clip_per_seed(theta.grad, grad_clip)
        with torch.no_grad():
            before = theta.detach().clone()
            opt.step()
            if bound is not None:
                theta.clamp_(-bound, bound)
            if not torch.isfinite(theta).all():
                theta.copy_(before)
                stopped = f"non-finite gate logits at stage {stage}, update {step + 1}; kept the previous ones"
                break
        sched.step()
        done += 1
        if done == tail_at:
            theta_tail = theta.detach().clone()
        for name, value in {"loss": loss, **parts}.items():
            log.setdefault(name, []).append(value.detach().float().cpu().numpy())
        if progress is not None:
            progress(stage, step + 1, updates, float(loss.mean()))
    curves = {k: np.stack(v) for k, v in log.items()}
    return StageFit(theta.detach(), curves, done, stopped, theta_tail)


def chg_loss_fn(lm: LoadedModel, data: GatingData, lam: float, cfg: CHGConfig) -> LossFn:
    """loss_fn for :func:`fit_stage`: per-seed NLL - lam * mean clamp(theta); backward is done inside
    (micro-batched), the returned loss is detached."""

    def fn(theta: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k = theta.shape[0]
        per_pass = max(1, cfg.micro_batch // k)
        nll = torch.zeros(k)
        for start in range(0, len(rows), per_pass):
            chunk = rows[start : start + per_pass]
            ids, att, lmask = data.rows(chunk)
            lp = gated_logprob(lm, ids, att, lmask, torch.sigmoid(theta))  # [K, b]
            part = -lp.sum(1) / len(rows)
            if not torch.isfinite(part).all():
                return part.detach().cpu(), {}
            part.sum().backward()
            nll += part.detach().cpu()
        reg = theta.clamp(-cfg.clamp, cfg.clamp).mean(dim=(1, 2))
        if lam:
            (-lam * reg).sum().backward()
        return nll - lam * reg.detach().cpu(), {"nll": nll, "reg": reg.detach().cpu()}

    return fn


@torch.no_grad()
def stage_objective(lm: LoadedModel, data: GatingData, theta: torch.Tensor, lam: float, cfg: CHGConfig) -> torch.Tensor:
    """The stage objective per seed [K] (float64) on all of ``data``: -mean target log-prob - lam * mean clamp(theta)."""
    nll = -mean_logprob(lm, data, torch.sigmoid(theta), micro_batch=cfg.micro_batch).double()
    return nll - lam * theta.clamp(-cfg.clamp, cfg.clamp).mean(dim=(1, 2)).double()


def fit_chg(lm: LoadedModel, data: GatingData, config: CHGConfig | None = None, *,
            progress: Progress | None = None) -> CHGResult:
    """The three CHG fits for ``config.seeds`` seeds at once, with their convergence diagnostics (the
    objective at each stage's start, 90% and end on the first ``config.eval_rows`` rows). See the
    package docstring and :mod:`~headmine.causal.head_gating.convergence`."""
    cfg = config or CHGConfig()
    g = lm.geometry
    if any(p.requires_grad for p in lm.model.parameters()):
        raise InputError("the model has trainable parameters; CHG needs a frozen model",
                         "load it with load_model() (weights are frozen) or call requires_grad_(False)")
    lm.check_length(int(data.attention_mask.sum(1).max()))
    start = time.perf_counter()
    ev = data.subset(cfg.eval_rows)
    theta0 = init_logits(cfg.seeds, g.n_layers, g.n_heads, seed=cfg.seed, init_range=cfg.init_range)
    thetas = {"G": theta0, "G+": theta0, "G-": theta0}
    curves: dict[str, dict[str, np.ndarray]] = {}
    done: dict[str, int] = {}
    diagnostics: dict[str, StageDiagnostics] = {}
    stopped = None
    plan = (("G", 0.0, 0), ("G+", cfg.lam, 1), ("G-", -cfg.lam, 2))
    for stage, lam, i in plan:
        init = theta0 if stage == "G" else thetas["G"]
        thetas[stage] = init
        if stopped:
            done[stage] = 0
            continue
        res = fit_stage(chg_loss_fn(lm, data, lam, cfg), init, updates=cfg.updates[i], lr=cfg.lrs[i],
                        grad_clip=cfg.grad_clip, batches=Batches(len(data), cfg.batch_size, cfg.data_seed + 1000 * i),
                        stage=stage, progress=progress, bound=cfg.clamp if cfg.project else None)
        thetas[stage], curves[stage], done[stage], stopped = res.theta, res.curves, res.done, res.stopped
        tail = res.theta_tail if res.theta_tail is not None else init
        try:
            losses = [stage_objective(lm, ev, t, lam, cfg) for t in (init, tail, res.theta)]
        except NumericalError:  # the model itself went non-finite (the stop message names where): no objective
            losses = [torch.full((cfg.seeds,), float("nan"), dtype=torch.float64)] * 3
        diagnostics[stage] = stage_diagnostics(stage, res.done, losses, res.curves, tail, res.theta,
                                               res.done - tail_start(res.done))
    result = CHGResult(
        G=torch.sigmoid(thetas["G"]), G_plus=torch.sigmoid(thetas["G+"]), G_minus=torch.sigmoid(thetas["G-"]),
        config=cfg, curves=curves, status="stopped" if stopped else "complete", message=stopped,
        seeds=[cfg.seed + k for k in range(cfg.seeds)], duration_s=time.perf_counter() - start, updates_done=done,
    )
    result.convergence = assess(diagnostics, result.seed_agreement(), complete=not stopped and len(diagnostics) == 3,
                                tol=cfg.converge_tol, min_f_r=cfg.min_f_r, min_label_agreement=cfg.min_label_agreement,
                                min_label_kappa=cfg.min_label_kappa)
    return result
