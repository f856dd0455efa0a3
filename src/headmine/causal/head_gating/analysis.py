"""Validating CHG scores: targeted ablation (paper Fig. 2) and agreement with activation patching
(paper Fig. 4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from headmine.causal.head_gating.data import GatingData
from headmine.causal.head_gating.logprob import mean_logprob
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel


@torch.no_grad()
def targeted_ablation(lm: LoadedModel, data: GatingData, g_plus: torch.Tensor, scores: dict[str, torch.Tensor],
                      ks: Sequence[int], *, micro_batch: int = 32) -> dict[str, np.ndarray]:
    """Paper Fig. 2: from G+ [L, H], set the top-k heads of each score [L, H] to 0 vs to 1;
    returns ``{name: delta [len(ks)]}`` with delta = logp(top-k := 0) - logp(top-k := 1) (mean over rows)."""
    sets = []
    for score in scores.values():
        order = torch.argsort(score.flatten(), descending=True, stable=True)
        for k in ks:
            lo, hi = g_plus.flatten().clone(), g_plus.flatten().clone()
            lo[order[:k]] = 0.0
            hi[order[:k]] = 1.0
            sets += [lo.view_as(g_plus), hi.view_as(g_plus)]
    gates = torch.stack(sets)
    lps = []
    chunk = max(1, micro_batch // 2) * 2
    for s in range(0, gates.shape[0], chunk):
        lps.append(mean_logprob(lm, data, gates[s : s + chunk], micro_batch=max(micro_batch, chunk)))
    lp = torch.cat(lps).view(len(scores), len(ks), 2)
    return {name: (lp[i, :, 0] - lp[i, :, 1]).numpy() for i, name in enumerate(scores)}


def default_ks(n_heads_total: int) -> tuple[int, ...]:
    raw = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    return tuple(k for k in raw if k <= n_heads_total // 2) or (1,)


def patching_agreement(facilitation: torch.Tensor, mediating: Sequence[HeadId]) -> dict[str, float]:
    """Welch t-test (paper Fig. 4): facilitation [L, H] (e.g. max over seeds) of the mediating heads vs
    all other heads. Returns t, df, p (one-sided, mediating > others), the two means and counts."""
    mask = torch.zeros_like(facilitation, dtype=torch.bool)
    for h in mediating:
        mask[h.layer, h.head] = True
    med, other = facilitation[mask].double().numpy(), facilitation[~mask].double().numpy()
    if len(med) < 2 or len(other) < 2:
        return {"t": math.nan, "df": math.nan, "p": math.nan, "mean_mediating": float(np.mean(med)) if len(med) else math.nan,
                "mean_other": float(np.mean(other)) if len(other) else math.nan, "n_mediating": len(med), "n_other": len(other)}
    t = stats.ttest_ind(med, other, equal_var=False, alternative="greater")
    v1, v2 = med.var(ddof=1) / len(med), other.var(ddof=1) / len(other)
    df = (v1 + v2) ** 2 / (v1**2 / (len(med) - 1) + v2**2 / (len(other) - 1)) if v1 + v2 > 0 else math.nan
    return {"t": float(t.statistic), "df": float(df), "p": float(t.pvalue), "mean_mediating": float(med.mean()),
            "mean_other": float(other.mean()), "n_mediating": len(med), "n_other": len(other)}


def mediating_heads(effects: torch.Tensor, n_sd: float = 3.0) -> list[HeadId]:
    """Heads whose patching effect [L, H] is more than ``n_sd`` standard deviations above the mean (paper 4.3)."""
    e = effects.double()
    cut = e.mean() + n_sd * e.std()
    return [HeadId(int(l_), int(h)) for l_, h in (e > cut).nonzero().tolist()]
