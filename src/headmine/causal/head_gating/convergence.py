"""Has a CHG fit converged? Per-stage diagnostics and one verdict.

Per stage and seed (:class:`StageDiagnostics`):

- ``rel_change``: how much the stage's objective still moved in its last 10% of updates, as a share of
  how much it moved over the whole stage::

      rel_change = |L(theta_90%) - L(theta_end)| / max(|L(theta_start) - L(theta_end)|, LOSS_FLOOR)

  ``L`` is the stage's full objective (NLL - lam * mean clamp(theta)) on a fixed set of evaluation rows,
  evaluated at three snapshots of the gate logits, so it carries no mini-batch noise (the per-update
  training curve does: its rows change every update). The denominator is the stage's own change, not
  the loss level, because the G+/G- objectives include the regulariser and can sit near zero or below.
  For a loss that decays exponentially with time constant tau over T updates, the share is about
  ``exp(-0.9 T / tau) * (1 - exp(-0.1 T / tau))``; it falls under 1% once T > ~3.7 tau, i.e. when the
  stage ended within ~2.5% of its asymptote. A stage still moving linearly scores ~10%.
  ``LOSS_FLOOR`` (0.01 nats) keeps a stage that barely moved (already at its optimum) from dividing
  noise by noise.
- ``grad_norm``: mean pre-clip gradient norm of the gate logits over the last 10% of updates (and over
  the first 10%, ``grad_norm_first``): a diagnostic, not part of the verdict, because mini-batch noise
  keeps it above zero even at the optimum.
- ``gate_flips``: the share of heads whose gate crossed 0.5 during the last 10% of updates (labels
  still changing).

Across seeds: the mean pairwise Pearson r of F, the mean pairwise share of heads with the same label and
its chance-corrected form, Cohen's kappa
(:meth:`~headmine.causal.head_gating.results.CHGResult.seed_agreement`).

Verdict (:func:`assess`): converged when the fit completed, every stage's worst seed has
``rel_change <= tol`` and at least two seeds agree with ``F_pearson >= min_f_r``,
``label_agreement >= min_label_agreement`` and ``label_kappa >= min_label_kappa``. The defaults live in
:class:`CHGConfig` (see there for why those values). "Settled, seeds disagree" (every stage within tol,
seeds apart) is NOT converged: the objective stopped moving, but where it stopped depends on the start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: nats; a stage whose objective moved less than this in total is judged against this change instead.
LOSS_FLOOR = 0.01


@dataclass(frozen=True)
class StageDiagnostics:
    """One stage's convergence numbers, one value per seed (see the module docstring)."""

    stage: str
    updates: int
    loss_start: tuple[float, ...]
    loss_tail: tuple[float, ...]
    loss_end: tuple[float, ...]
    grad_norm: tuple[float, ...]
    grad_norm_first: tuple[float, ...]
    gate_flips: tuple[float, ...]

    @property
    def rel_change(self) -> tuple[float, ...]:
        return tuple(relative_change(s, t, e) for s, t, e in zip(self.loss_start, self.loss_tail, self.loss_end, strict=True))

    @property
    def worst_rel_change(self) -> float:
        vals = [v for v in self.rel_change if math.isfinite(v)]
        return max(vals) if len(vals) == len(self.rel_change) and vals else math.inf

    def to_dict(self) -> dict[str, Any]:
        """Scalars first (worst or mean over seeds, what a table shows), then the per-seed lists."""
        return {
            "updates": self.updates,
            "rel_change": self.worst_rel_change,
            "grad_norm": float(np.mean(self.grad_norm)) if self.grad_norm else math.nan,
            "grad_norm_first": float(np.mean(self.grad_norm_first)) if self.grad_norm_first else math.nan,
            "gate_flips": float(np.max(self.gate_flips)) if self.gate_flips else math.nan,
            "loss_end": float(np.mean(self.loss_end)),
            "per_seed": {
                "rel_change": list(self.rel_change), "loss_start": list(self.loss_start), "loss_tail": list(self.loss_tail),
                "loss_end": list(self.loss_end), "grad_norm": list(self.grad_norm),
                "grad_norm_first": list(self.grad_norm_first), "gate_flips": list(self.gate_flips),
            },
        }


def relative_change(start: float, tail: float, end: float) -> float:
    """``|tail - end| / max(|start - end|, LOSS_FLOOR)``: the share of a stage's change made in its last 10%."""
    if not all(math.isfinite(v) for v in (start, tail, end)):
        return math.inf
    return abs(tail - end) / max(abs(start - end), LOSS_FLOOR)


def stage_diagnostics(stage: str, updates: int, losses: Sequence[torch.Tensor], curves: Mapping[str, np.ndarray],
                      theta_tail: torch.Tensor, theta_end: torch.Tensor, tail: int) -> StageDiagnostics:
    """Diagnostics of one stage from its objective [K] at (start, 90%, end), its curves ([updates, K]
    arrays, ``grad_norm`` among them) and the gate logits [K, L, H] at 90% and at the end; ``tail`` is the
    number of updates in the last 10%."""
    start, mid, end = (torch.as_tensor(x).double().tolist() for x in losses)
    k = len(end)
    gn = curves.get("grad_norm")
    if gn is None or len(gn) == 0:
        last = first = (math.nan,) * k
    else:
        n = max(1, min(tail, len(gn)))
        last = tuple(float(v) for v in np.asarray(gn)[-n:].mean(0))
        first = tuple(float(v) for v in np.asarray(gn)[:n].mean(0))
    flips = ((theta_tail >= 0) != (theta_end >= 0)).flatten(1).float().mean(1)
    return StageDiagnostics(stage=stage, updates=updates, loss_start=tuple(start), loss_tail=tuple(mid),
                            loss_end=tuple(end), grad_norm=last, grad_norm_first=first,
                            gate_flips=tuple(float(v) for v in flips))


@dataclass(frozen=True)
class Convergence:
    """The verdict on a CHG fit, its reasons and the numbers behind it; ``to_dict`` is the ``convergence``
    artifact of a CHG run."""

    converged: bool
    stages: dict[str, StageDiagnostics]
    agreement: dict[str, float]
    tol: float
    min_f_r: float
    min_label_agreement: float
    reasons: list[str] = field(default_factory=list)
    min_label_kappa: float = 0.0

    @property
    def verdict(self) -> str:
        return "converged" if self.converged else "not converged"

    def to_dict(self) -> dict[str, Any]:
        return {
            "converged": self.converged,
            "verdict": self.verdict,
            "reasons": "; ".join(self.reasons),
            "tol": self.tol,
            "min_f_r": self.min_f_r,
            "min_label_agreement": self.min_label_agreement,
            "F_pearson": self.agreement.get("F_pearson", math.nan),
            "label_agreement": self.agreement.get("label_agreement", math.nan),
            "label_kappa": self.agreement.get("label_kappa", math.nan),
            "min_label_kappa": self.min_label_kappa,
            "stages": {name: d.to_dict() for name, d in self.stages.items()},
        }


def assess(stages: Mapping[str, StageDiagnostics], agreement: Mapping[str, float], *, complete: bool, tol: float,
           min_f_r: float, min_label_agreement: float, min_label_kappa: float = 0.0) -> Convergence:
    """The verdict (see the module docstring); ``reasons`` lists every failed condition."""
    reasons = []
    if not complete:
        reasons.append("the fit stopped early")
    for name, d in stages.items():
        if d.worst_rel_change > tol:
            reasons.append(f"stage {name}: loss still moving (relative change {d.worst_rel_change:.3f} > {tol:g})")
    r, same = agreement.get("F_pearson", math.nan), agreement.get("label_agreement", math.nan)
    if not agreement:
        reasons.append("one seed: agreement between seeds cannot be measured")
    else:
        if not r >= min_f_r:
            reasons.append(f"seeds disagree: F correlation {r:.2f} < {min_f_r:g}")
        if not same >= min_label_agreement:
            reasons.append(f"seeds disagree: label agreement {same:.2f} < {min_label_agreement:g}")
        kappa = agreement.get("label_kappa", math.nan)
        if min_label_kappa > 0 and not kappa >= min_label_kappa:
            reasons.append(f"seeds disagree beyond chance: label kappa {kappa:.2f} < {min_label_kappa:g}")
    return Convergence(converged=not reasons, stages=dict(stages), agreement=dict(agreement), tol=tol, min_f_r=min_f_r,
                       min_label_agreement=min_label_agreement, reasons=reasons, min_label_kappa=min_label_kappa)
