"""IOI circuit evaluation (Wang et al. 2022, §4 / CIRCUITS_AND_KV.md §1.4): mean ablation over p_ABC per
template, faithfulness F(C)/F(M) and completeness, with bootstrap CIs; plus the batched "metric with these
head sites ablated" runner the role tests (``ioi_roles``) share.

Ablation, as in the paper's code (``do_circuit_extraction``, ``compute_mean(mean_by_groups)``): a head's z
is replaced by its mean over ABC prompts *of the same template*, position by position (every template
has one token layout: the names, places and objects are single tokens, checked when the means are
built). Ablated = every head outside the circuit at every position, and every circuit head at every
position except its class position (name movers, negative and backup name movers, S-inhibition: END;
induction and duplicate-token heads: S2; previous-token heads: S1+1). MLPs are not ablated.

``F(X)`` = mean logit difference of model X on the (held-out) IOI prompts; faithfulness = F(C) / F(M)
(the paper reports 87% for GPT-2 small); completeness compares F(C \\ K) with F(M \\ K) for each class K.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headmine.causal.ablation import reference_z
from headmine.causal.fast_sweep import PrefixCache, RowwiseReplace
from headmine.causal.interventions import Intervention
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError, TaskError
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel
from headmine.tasks.ioi import ioi
from headmine.tasks.prompt_set import PromptSet

POSITION_OF_ROLE: dict[str, str] = {
    "name_mover": "END", "negative_name_mover": "END", "backup_name_mover": "END", "s_inhibition": "END",
    "induction": "S2", "duplicate_token": "S2", "previous_token": "S1+1",
}
"""The class position each role keeps its clean value at in the circuit (paper's ``RELEVANT_TOKENS``)."""


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class IOIBatch:
    """Clean and ABC ids of an IOI prompt set, its logit-difference metric and per-row positions."""

    ids: torch.Tensor
    mask: torch.Tensor
    corr_ids: torch.Tensor
    corr_mask: torch.Tensor
    metric: AnswerMetric
    pos: dict[str, torch.Tensor]  # IO, S1, S2, S1+1, END: LongTensor [B]
    template: torch.Tensor  # [B]

    @classmethod
    def of(cls, prompts: PromptSet) -> IOIBatch:
        if prompts.task != "ioi":
            raise InputError(f"the IOI circuit needs the ioi task's prompts, got {prompts.task!r}",
                             "build them with headmine.tasks.ioi.ioi(tokenizer, n=...)")
        clean, corr = prompts.clean_batch(), prompts.corrupted_batch()
        meta = clean.meta
        pos = {k: meta[k].long() for k in ("IO", "S1", "S2", "END")}
        pos["S1+1"] = pos["S1"] + 1
        return cls(clean.input_ids, clean.attention_mask, corr.input_ids, corr.attention_mask,
                   AnswerMetric.from_batch(clean, "logit_diff"), pos, meta["template"].long())

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])


# --------------------------------------------------------------------------- per-template ABC means
def abc_means(lm: LoadedModel, templates: Sequence[int], *, n_per_template: int = 8, seed: int = 1000) -> dict[int, dict[int, torch.Tensor]]:
    """Per template, per layer: mean z over ``n_per_template`` fresh ABC prompts, [T_t, H, d_head]."""
    if n_per_template < 1:
        raise InputError(f"n_per_template must be >= 1, got {n_per_template}", "use a few ABC prompts per template")
    out: dict[int, dict[int, torch.Tensor]] = {}
    for t in sorted({int(t) for t in templates}):
        batch = ioi(lm.tokenizer, n=n_per_template, seed=seed + t, templates=(t,)).corrupted_batch()
        if not bool(batch.attention_mask.all()):
            raise TaskError(f"IOI template {t} does not tokenise to one layout in this tokenizer",
                            "per-template mean ablation needs single-token names, places and objects")
        rec = reference_z(lm, batch.input_ids, batch.attention_mask)
        out[t] = {layer: z.float().mean(0).cpu() for layer, z in rec.z.items()}
    return out


def row_values(means: Mapping[int, Mapping[int, torch.Tensor]], batch: IOIBatch) -> dict[int, torch.Tensor]:
    """Per layer, the ablation value of every row: its template's ABC mean, [B, T, H, d] (zero padding)."""
    t_max = int(batch.ids.shape[1])
    layers = next(iter(means.values())).keys()
    out: dict[int, torch.Tensor] = {}
    for layer in layers:
        rows = []
        for t in batch.template.tolist():
            if int(t) not in means:
                raise InputError(f"no ABC mean for IOI template {t}", "build abc_means over the batch's templates")
            m = means[int(t)][layer]
            pad = torch.zeros(t_max - m.shape[0], *m.shape[1:])
            rows.append(torch.cat([m[:t_max], pad]))
        out[layer] = torch.stack(rows)
    return out


@dataclass(frozen=True, kw_only=True)
class TiledMean(Intervention):
    """Replace the z of ``heads`` (all positions) by per-row values [B, T, H, d], for runs whose rows are
    ``k`` stacked copies of the B prompts (variant-major, as every sweep in ``headmine.causal``)."""

    values: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        v = self.values[layer].to(z.device, z.dtype)
        b = v.shape[0]
        r, t = z.shape[0], z.shape[1]
        if r % b or v.shape[1] != t:
            raise InputError(f"ablation values for {b} prompts of {v.shape[1]} tokens do not fit a run of {r} x {t}")
        mask = self.site_mask(layer, z[:b])[0, 0]  # [H, 1]
        return torch.where(mask, v.repeat(r // b, 1, 1, 1), z)


# --------------------------------------------------------------------------- batched ablation runs
Ablation = dict[int, torch.Tensor]
"""One variant: per layer, bool [B, T, H], True where the head's z is replaced by its ablation value."""


def ablation_of(heads: Sequence[HeadId], batch: IOIBatch, n_heads: int, keep: Mapping[HeadId, str] | None = None) -> Ablation:
    """Ablate ``heads`` at every position, except each head in ``keep`` at its class position (per row)."""
    b, t = batch.ids.shape
    out: Ablation = {}
    rows = torch.arange(b)
    for h in heads:
        m = out.setdefault(h.layer, torch.zeros(b, t, n_heads, dtype=torch.bool))
        m[:, :, h.head] = True
        if keep and h in keep:
            m[rows, batch.pos[keep[h]], h.head] = False
    return out


def metric_under(cache: PrefixCache, metric: AnswerMetric, variants: Sequence[Ablation],
                 values: Mapping[int, torch.Tensor], *, max_rows: int = 256) -> torch.Tensor:
    """Metric [n_variants, B] with each variant's head sites set to ``values`` [B, T, H, d] (one batched
    rerun per chunk of variants from the first layer any variant touches)."""
    b = cache.batch
    out = torch.empty(len(variants), b)
    per = max(1, max_rows // b)
    for start in range(0, len(variants), per):
        chunk = variants[start:start + per]
        layers = sorted({lay for v in chunk for lay in v})
        if not layers:
            out[start:start + len(chunk)] = metric(cache.logits).cpu()
            continue
        k = len(chunk)
        masks, vals = {}, {}
        for lay in layers:
            ref = next(v[lay] for v in chunk if lay in v)
            masks[lay] = torch.stack([v.get(lay, torch.zeros_like(ref)) for v in chunk])
            vals[lay] = values[lay][None]
        logits = cache.run_from(layers[0], k, interventions=[RowwiseReplace(masks=masks, values=vals)],
                                positions=metric.end_pos)
        out[start:start + k] = metric.from_end_logits(logits).view(k, b).cpu()
    return out


# --------------------------------------------------------------------------- statistics
def ratio_ci(num: torch.Tensor, den: torch.Tensor, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) with a 95% percentile bootstrap over prompts (rows resampled jointly)."""
    x, y = num.double().numpy(), den.double().numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = x[idx].mean(1) / y[idx].mean(1)
    return float(x.mean() / y.mean()), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def mean_ci(values: torch.Tensor, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): 95% percentile bootstrap of the mean over the last axis."""
    x = values.double().numpy()
    rng = np.random.default_rng(seed)
    means = x[..., rng.integers(0, x.shape[-1], size=(n_boot, x.shape[-1]))].mean(-1)
    return float(x.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


# --------------------------------------------------------------------------- faithfulness
def circuit_faithfulness(lm: LoadedModel, batch: IOIBatch, roles: Mapping[str, Sequence[HeadId]],
                         values: Mapping[int, torch.Tensor], *, n_random: int = 20, seed: int = 0,
                         max_rows: int = 256) -> dict[str, Any]:
    """F(C) / F(M) on ``batch`` with a bootstrap CI; F(empty circuit); random circuits of the same size and
    class positions; completeness |F(C \\ K) - F(M \\ K)| for each role K. Plain data (JSON-ready)."""
    g = lm.geometry
    keep: dict[HeadId, str] = {}
    for role, heads in roles.items():
        for h in heads:
            keep.setdefault(h, POSITION_OF_ROLE[role])
    all_heads = g.heads()
    outside = [h for h in all_heads if h not in keep]
    cache = PrefixCache(lm, batch.ids, batch.mask)
    full = batch.metric(cache.logits).cpu()
    variants: list[Ablation] = [ablation_of(all_heads, batch, g.n_heads, keep), ablation_of(all_heads, batch, g.n_heads)]
    rng = np.random.default_rng(seed)
    circuit = list(keep)
    for _ in range(n_random if circuit else 0):
        pick = [all_heads[i] for i in rng.choice(len(all_heads), size=len(circuit), replace=False)]
        variants.append(ablation_of(all_heads, batch, g.n_heads, dict(zip(pick, keep.values(), strict=True))))
    named = [(r, list(hs)) for r, hs in roles.items() if hs]
    for _, hs in named:
        rest = {h: p for h, p in keep.items() if h not in hs}
        variants.append(ablation_of(outside + hs, batch, g.n_heads, rest))  # C \ K
        variants.append(ablation_of(hs, batch, g.n_heads))  # M \ K
    res = metric_under(cache, batch.metric, variants, values, max_rows=max_rows)
    f_c, f_empty = res[0], res[1]
    rand = res[2:2 + (n_random if circuit else 0)]
    comp_rows = res[2 + len(rand):]
    fm = float(full.mean())
    faith, lo, hi = ratio_ci(f_c, full)
    rand_faith = (rand.mean(1) / fm).tolist() if len(rand) else []
    completeness = []
    for i, (role, hs) in enumerate(named):
        c_k, m_k = comp_rows[2 * i], comp_rows[2 * i + 1]
        gap = mean_ci(c_k - m_k, seed=seed)
        completeness.append({"role": role, "n_heads": len(hs), "F_C_minus_K": float(c_k.mean()),
                             "F_M_minus_K": float(m_k.mean()), "gap": gap[0], "gap_ci": [gap[1], gap[2]]})
    return {
        "n_prompts": batch.n, "n_circuit_heads": len(circuit), "F_model": fm, "F_model_ci": list(mean_ci(full)[1:]),
        "F_circuit": float(f_c.mean()), "F_empty": float(f_empty.mean()),
        "faithfulness": faith, "faithfulness_ci": [lo, hi], "empty_faithfulness": float(f_empty.mean()) / fm,
        "random_circuits": {"n": len(rand_faith), "mean": float(np.mean(rand_faith)) if rand_faith else None,
                            "max": float(np.max(rand_faith)) if rand_faith else None, "values": rand_faith},
        "completeness": completeness,
        "ablation": "mean over ABC prompts of the same template, per position; MLPs not ablated",
    }
