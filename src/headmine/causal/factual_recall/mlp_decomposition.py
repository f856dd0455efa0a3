"""MLP decomposition: the MLP output at the prediction position as scaled head outputs plus a task intercept.

Model (METHODS.md §2.4, a reconstruction; the paper's exact regressors are unverified)::

    m_n = sum_i beta_i * o_{n,i} + b_{task(n)} + e_n

``m_n`` is what the MLP of ``layer`` writes into the residual stream at the prediction position of
prompt n, ``o_{n,i}`` what head i writes there (the heads of the same layer by default, plus any
``extra_heads`` such as upstream argument-passing heads); one scalar ``beta_i`` per head and one
vector intercept ``b_t`` per relation, fitted jointly by ordinary least squares over all prompts
and all d_model coordinates (beta from the within-relation centred data, then
``b_t = mean_t(m) - sum_i beta_i mean_t(o_i)``). Explained variance ``r2`` is against the global
mean; ``r2_intercept_only`` is the same with beta = 0, so ``r2 - r2_intercept_only`` is what the heads
add. beta > 0 = the MLP passes/amplifies a head's message, beta ~ 0 = erases it.

Intercept test: decode ``b_t`` through the final-norm gain and unembedding
(:func:`common.decode_direction`) and compare the logits of the relation's answer tokens (the
"answer class", every answer of that relation in the batch) with all other tokens: AUROC and a
one-sided Mann-Whitney normal-approximation p-value. AUROC near 1 = the intercept points at the
answer class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.factual_recall.common import (
    as_list,
    check_fact_batch,
    decode_direction,
    sub_batches,
    written_heads,
    written_mlp,
)
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch


@dataclass(frozen=True)
class Intercept:
    """One relation's intercept and how it decodes."""

    relation: str
    vector: torch.Tensor       # [d_model]
    answer_auroc: float
    p_value: float
    top_tokens: list[int]      # 10 highest-logit token ids
    answer_ids: list[int]


@dataclass(frozen=True)
class MlpDecomposition:
    layer: int
    heads: list[HeadId]
    beta: torch.Tensor         # [k]
    r2: float
    r2_intercept_only: float
    intercepts: dict[str, Intercept] = field(default_factory=dict)
    n: int = 0

    def summary(self) -> dict[str, object]:
        return {"layer": self.layer, "r2": self.r2, "r2_intercept_only": self.r2_intercept_only, "n": self.n,
                "beta": {str(h): float(b) for h, b in zip(self.heads, self.beta, strict=True)},
                "intercept_auroc": {r: ic.answer_auroc for r, ic in self.intercepts.items()},
                "intercept_p": {r: ic.p_value for r, ic in self.intercepts.items()}}


def collect_end_outputs(
    lm: LoadedModel, batch: TokenBatch, layers: list[int], *, batch_size: int = 8
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Written head outputs {layer: [N, H, d]} and MLP outputs {layer: [N, d]} at the prediction position."""
    heads: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    mlps: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    spec_sites = frozenset({Site.RESULT, Site.ATTN_OUT, Site.MLP_OUT})
    for sub in sub_batches(batch, batch_size):
        spec = CaptureSpec(sites=spec_sites, layers=tuple(layers), query_positions=sub.meta["end_pos"], keep_logits=False)
        rec = run_capture(lm, spec, sub.input_ids, sub.attention_mask)
        with torch.no_grad():
            for layer in layers:
                heads[layer].append(written_heads(lm, layer, rec.result[layer][:, 0], rec.attn_out[layer][:, 0]).float().cpu())
                mlps[layer].append(written_mlp(lm, layer, rec.mlp_out[layer][:, 0]).float().cpu())
    return {k: torch.cat(v) for k, v in heads.items()}, {k: torch.cat(v) for k, v in mlps.items()}


def class_auroc(scores: torch.Tensor, members: list[int]) -> tuple[float, float]:
    """AUROC of ``members`` against the rest of ``scores`` [V] and a one-sided Mann-Whitney p-value."""
    v = scores.numel()
    k = len(set(members))
    ranks = torch.empty(v, dtype=torch.float64)
    ranks[scores.double().argsort()] = torch.arange(1, v + 1, dtype=torch.float64)
    r_sum = float(ranks[list(set(members))].sum())
    u = r_sum - k * (k + 1) / 2
    auroc = u / (k * (v - k))
    sd = math.sqrt(k * (v - k) * (v + 1) / 12)
    z = (u - k * (v - k) / 2) / sd
    return auroc, 0.5 * math.erfc(z / math.sqrt(2))


def fit_decomposition(
    o: torch.Tensor, m: torch.Tensor, relations: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float, float]:
    """Least squares of ``m`` [N, d] on ``o`` [N, k, d] with one intercept per relation: (beta, b, r2, r2_b_only)."""
    o, m = o.double(), m.double()
    groups = sorted(set(relations))
    idx = {g: torch.tensor([r == g for r in relations]) for g in groups}
    mc, oc = m.clone(), o.clone()
    for g in groups:
        mc[idx[g]] -= m[idx[g]].mean(0)
        oc[idx[g]] -= o[idx[g]].mean(0)
    x = oc.permute(0, 2, 1).reshape(-1, o.shape[1])  # [N*d, k]
    beta = torch.linalg.lstsq(x, mc.reshape(-1, 1), driver="gelsd").solution[:, 0]
    b = {g: m[idx[g]].mean(0) - torch.einsum("k,nkd->d", beta, o[idx[g]]) / int(idx[g].sum()) for g in groups}
    ss_tot = float((m - m.mean(0)).pow(2).sum())
    ss_res = float((mc - torch.einsum("k,nkd->nd", beta, oc)).pow(2).sum())
    ss_within = float(mc.pow(2).sum())
    if ss_tot <= 0:
        return beta, b, 1.0, 1.0
    return beta, b, 1 - ss_res / ss_tot, 1 - ss_within / ss_tot


def decompose_mlp(
    lm: LoadedModel,
    batch: TokenBatch,
    *,
    layer: int,
    extra_heads: list[HeadId] | None = None,
    batch_size: int = 8,
    outputs: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] | None = None,
) -> MlpDecomposition:
    """Fit the decomposition for the MLP of ``layer`` (see module docstring).

    ``outputs`` may pass precomputed :func:`collect_end_outputs` results covering the needed layers.
    """
    check_fact_batch(batch)
    lm.geometry.check_layer(layer)
    extra = [h for h in (extra_heads or []) if h.layer != layer]
    for h in extra:
        lm.geometry.check_head(h.layer, h.head)
        if h.layer > layer:
            raise InputError(f"extra head {h} comes after the MLP of layer {layer}", "use heads of layers <= the MLP's layer")
    need = sorted({layer, *(h.layer for h in extra)})
    if outputs is None or any(x not in outputs[0] for x in need):
        outputs = collect_end_outputs(lm, batch, need, batch_size=batch_size)
    heads_out, mlp_out = outputs
    regressors = [HeadId(layer, h) for h in range(lm.geometry.n_heads)] + extra
    o = torch.stack([heads_out[h.layer][:, h.head] for h in regressors], dim=1)
    m = mlp_out[layer]
    relations = as_list(batch.meta["relation"])
    beta, b, r2, r2_b = fit_decomposition(o, m, relations)
    targets = as_list(batch.meta["target_id"])
    intercepts = {}
    with torch.no_grad():
        for rel, vec in b.items():
            logits = decode_direction(lm, vec.to(lm.adapter.W_U().dtype).to(lm.device)).float().cpu()
            answers = sorted({t for t, r in zip(targets, relations, strict=True) if r == rel})
            auroc, p = class_auroc(logits, answers)
            intercepts[rel] = Intercept(rel, vec.float(), auroc, p, logits.topk(10).indices.tolist(), answers)
    return MlpDecomposition(layer, regressors, beta.float(), r2, r2_b, intercepts, len(batch))


def mlp_layer_scan(lm: LoadedModel, batch: TokenBatch, *, layers: list[int] | None = None,
                   batch_size: int = 8) -> list[MlpDecomposition]:
    """:func:`decompose_mlp` for every layer (same-layer heads only), one capture pass."""
    layers = list(range(lm.geometry.n_layers)) if layers is None else layers
    outputs = collect_end_outputs(lm, batch, layers, batch_size=batch_size)
    return [decompose_mlp(lm, batch, layer=layer, outputs=outputs) for layer in layers]
