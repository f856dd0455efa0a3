"""Fitted CHG gates (:class:`CHGResult`) and the per-head labels derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from headmine.causal.head_gating.config import CHGConfig
from headmine.causal.head_gating.convergence import Convergence

LABELS = ("facilitating", "interfering", "irrelevant", "inconsistent", "unclassified")

@dataclass
class CHGResult:
    """Fitted gates of K seeds, [K, L, H] each, with training curves.

    ``curves[stage][name]`` is float array [updates_done, K] for name in ("loss", "nll", "reg");
    stages are "G" (lam = 0), "G+" and "G-" (``grad_norm`` too, per seed, before clipping). ``status``
    is "complete" or "stopped" (a non-finite loss: the gates are the last good ones, ``message`` says
    where). ``convergence``: the diagnostics and verdict (:mod:`..convergence`); labels of a fit that
    has not converged are evidence, not findings.
    """

    G: torch.Tensor
    G_plus: torch.Tensor
    G_minus: torch.Tensor
    config: CHGConfig
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    status: str = "complete"
    message: str | None = None
    seeds: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    updates_done: dict[str, int] = field(default_factory=dict)
    convergence: Convergence | None = None

    @property
    def converged(self) -> bool:
        """True only when the convergence diagnostics were computed and passed."""
        return self.convergence is not None and self.convergence.converged

    @property
    def F(self) -> torch.Tensor:
        """Facilitation, G-: [K, L, H]."""
        return self.G_minus

    @property
    def N(self) -> torch.Tensor:
        """Interference, 1 - G+: [K, L, H]."""
        return 1 - self.G_plus

    @property
    def I(self) -> torch.Tensor:  # noqa: E743
        """Irrelevance, G+ (1 - G-): [K, L, H]."""
        return self.G_plus * (1 - self.G_minus)

    def label_codes(self) -> torch.Tensor:
        """LongTensor [K, L, H] indexing :data:`LABELS` per seed (threshold from the config)."""
        return label_codes(self.G_plus, self.G_minus, self.config.threshold)

    def aggregate(self) -> dict[str, torch.Tensor]:
        """Across seeds, [L, H] each: ``{F,N,I}_always`` / ``_any`` (fraction of heads labelled so in all /
        at least one seed, as bool), ``{F,N,I}_max`` / ``_mean`` (score max / mean over seeds)."""
        codes = self.label_codes()
        out: dict[str, torch.Tensor] = {}
        for name, idx, score in (("F", 0, self.F), ("N", 1, self.N), ("I", 2, self.I)):
            hit = codes == idx
            out[f"{name}_always"] = hit.all(0)
            out[f"{name}_any"] = hit.any(0)
            out[f"{name}_max"] = score.max(0).values
            out[f"{name}_mean"] = score.mean(0)
        return out

    def shares(self) -> dict[str, float]:
        """Fractions of heads per label (pooled over seeds) and per always/any aggregate, and
        ``{F,N,I}_always_chance``: the share "always" would have if the seeds labelled heads independently,
        each with its own label shares (the product of the per-seed shares). An "always" share near its
        chance share is mostly coincidence: with two seeds that each call 29% of heads facilitating, 8% of
        the heads are facilitating in both by chance alone."""
        codes = self.label_codes()
        out = {f"{lab}": float((codes == i).float().mean()) for i, lab in enumerate(LABELS)}
        agg = self.aggregate()
        per_seed = (codes.flatten(1)[:, :, None] == torch.arange(3)).double().mean(1)  # [K, 3] shares of F, N, I
        for idx, name in enumerate(("F", "N", "I")):
            out[f"{name}_always"] = float(agg[f"{name}_always"].float().mean())
            out[f"{name}_any"] = float(agg[f"{name}_any"].float().mean())
            out[f"{name}_always_chance"] = float(per_seed[:, idx].prod())
        return out

    def seed_agreement(self) -> dict[str, float]:
        """Mean pairwise agreement between seeds: Pearson r of F, N, I, the fraction of equal labels and
        Cohen's kappa of the labels (:func:`label_kappa`)."""
        k = self.G_plus.shape[0]
        if k < 2:
            return {}
        codes = self.label_codes().flatten(1)
        out: dict[str, float] = {}
        for name, score in (("F", self.F), ("N", self.N), ("I", self.I)):
            flat = score.flatten(1).double()
            rs = [_pearson(flat[i].numpy(), flat[j].numpy()) for i in range(k) for j in range(i + 1, k)]
            out[f"{name}_pearson"] = float(np.nanmean(rs)) if not all(np.isnan(rs)) else float("nan")
        same = [float((codes[i] == codes[j]).float().mean()) for i in range(k) for j in range(i + 1, k)]
        out["label_agreement"] = float(np.mean(same))
        out["label_kappa"] = float(np.mean([label_kappa(codes[i], codes[j]) for i in range(k) for j in range(i + 1, k)]))
        return out


def label_kappa(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cohen's kappa of two label vectors (codes): agreement beyond what the two label shares give by
    chance, (p_o - p_e) / (1 - p_e) with p_e = sum over labels of share_a * share_b. Two seeds that both
    call 90% of the heads irrelevant agree on >= 81% of heads by chance, so raw agreement alone is easy
    when one label dominates; kappa is 0 for chance agreement and 1 for identical labels (also when
    both give every head the same label)."""
    p_o = float((a == b).float().mean())
    p_e = sum(float((a == c).float().mean()) * float((b == c).float().mean()) for c in range(len(LABELS)))
    if p_o >= 1.0:
        return 1.0
    return (p_o - p_e) / (1.0 - p_e)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r, NaN (without a warning) when either side is constant (e.g. every gate at the same bound)."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def label_codes(g_plus: torch.Tensor, g_minus: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-head label index into :data:`LABELS`: facilitating (G+ and G- high), interfering (both low),
    irrelevant (I >= threshold), inconsistent (G+ low, G- high), else unclassified."""
    hi_p, hi_m = g_plus >= threshold, g_minus >= threshold
    irr = g_plus * (1 - g_minus) >= threshold
    codes = torch.full(g_plus.shape, 4, dtype=torch.long)
    codes[irr] = 2
    codes[hi_p & hi_m] = 0
    codes[~hi_p & ~hi_m] = 1
    codes[~hi_p & hi_m] = 3
    return codes
