"""Ablation sweeps over heads: zero, mean (over a reference set) and resample ablation.

``ablation_sweep`` measures the answer metric with each head ablated in turn, at every position.
The default ``fast=True`` path is exact and reuses the clean prefix (``fast_sweep``); ``fast=False``
is the naive loop of one full forward per head (kept as the reference and for benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headmine.capture import CaptureRecord, CaptureSpec, run_capture
from headmine.causal.engine import run_with_interventions
from headmine.causal.fast_sweep import PrefixCache, head_variants, sweep_variants
from headmine.causal.interventions import Intervention, Mean, PatchFrom, Zero
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric, HeadEffects
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel

MODES = ("zero", "mean", "resample")
REFERENCES = ("self", "corrupted")


def reference_z(loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> CaptureRecord:
    """A capture record holding z of every head (for mean / resample references)."""
    return run_capture(loaded, CaptureSpec(sites=frozenset({Site.Z}), keep_logits=False), input_ids, attention_mask)


def ablation_values(
    loaded: LoadedModel,
    mode: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    reference_ids: torch.Tensor | None = None,
    reference_mask: torch.Tensor | None = None,
    *,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Per layer, what an ablated head's z becomes: 0-dim zero, a [1, 1, 1, H, d] mean, or a
    [1, B, T, H, d] resampled source (z of another reference row, a fixed derangement)."""
    g = loaded.geometry
    if mode not in MODES:
        raise InputError(f"unknown ablation mode {mode!r}", f"use one of {MODES}")
    if mode == "zero":
        return {layer: torch.zeros(()) for layer in range(g.n_layers)}
    ref_ids = input_ids if reference_ids is None else reference_ids
    ref_mask = (attention_mask if reference_ids is None else reference_mask)
    rec = reference_z(loaded, ref_ids, ref_mask)
    heads = g.heads()
    if mode == "mean":
        mean = Mean.from_record(rec, heads)
        return {layer: v[None, None, None] for layer, v in mean.values.items()}
    if ref_ids.shape != input_ids.shape:
        raise InputError(
            f"resample ablation needs a reference batch shaped like the prompts: {tuple(ref_ids.shape)} vs {tuple(input_ids.shape)}",
            "use a reference set with as many prompts of the same token length",
        )
    src = PatchFrom.resample(rec, heads, seed=seed).source
    return {layer: v[None] for layer, v in src.items()}


def _naive_intervention(mode: str, head: HeadId, value: torch.Tensor) -> Intervention:
    if mode == "zero":
        return Zero(heads=(head,))
    if mode == "mean":
        return Mean(heads=(head,), values={head.layer: value[0, 0, 0]})
    return PatchFrom(heads=(head,), source={head.layer: value[0]})


def ablation_sweep(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    metric: AnswerMetric,
    *,
    mode: str = "zero",
    reference_ids: torch.Tensor | None = None,
    reference_mask: torch.Tensor | None = None,
    heads: Sequence[HeadId] | None = None,
    fast: bool = True,
    seed: int = 0,
    max_rows: int = 512,
) -> HeadEffects:
    """Metric with each head ablated (all positions). ``values`` [L, H, B]; heads not swept are NaN.

    ``mode``: ``zero``; ``mean`` (z averaged over the reference set's real tokens; default reference:
    the prompts themselves); ``resample`` (z from another reference row; same shape as the prompts).
    """
    g = loaded.geometry
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    values = ablation_values(loaded, mode, input_ids, attention_mask, reference_ids, reference_mask, seed=seed)
    variants = head_variants(loaded, heads)
    out = torch.full((g.n_layers, g.n_heads, metric.n), float("nan"))
    if fast:
        cache = PrefixCache(loaded, input_ids, attention_mask)
        baseline = metric(cache.logits).cpu()
        res = sweep_variants(cache, metric, variants, lambda layer: values[layer], max_rows=max_rows)
        for v, row in zip(variants, res, strict=True):
            out[v.layer, v.head] = row
    else:
        baseline = metric(run_with_interventions(loaded, input_ids, attention_mask)).cpu()
        for v in variants:
            head = HeadId(v.layer, v.head)
            logits = run_with_interventions(loaded, input_ids, attention_mask, [_naive_intervention(mode, head, values[v.layer])])
            out[v.layer, v.head] = metric(logits).cpu()
    return HeadEffects(method=f"ablation_{mode}", metric=metric.kind, values=out, baseline=baseline)


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, kw_only=True)
class AblationConfig(MethodConfig):
    """``mode``: zero | mean | resample; ``reference``: what mean/resample read, ``self`` (the
    prompts) or ``corrupted`` (the task's corrupted prompts)."""

    mode: str = "zero"
    reference: str = "self"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise InputError(f"unknown ablation mode {self.mode!r}", f"use one of {MODES}")
        if self.reference not in REFERENCES:
            raise InputError(f"unknown ablation reference {self.reference!r}", f"use one of {REFERENCES}")


class Ablation(CausalMethod[AblationConfig]):
    """Every head ablated in turn (exact fast sweep)."""

    name = "ablation"
    run_kind = "ablation"
    config_cls = AblationConfig

    def needs_corrupted(self, config: AblationConfig) -> bool:
        return config.reference == "corrupted"

    def paired_lengths(self, config: AblationConfig) -> bool:
        return config.mode == "resample"  # a mean over the corrupted set needs no pairing

    def run(self, lm: LoadedModel, config: AblationConfig, inputs: CausalInputs) -> HeadEffects:
        ref_ids, ref_mask = inputs.corrupted(self.name) if self.needs_corrupted(config) else (None, None)
        return ablation_sweep(lm, inputs.clean_ids, inputs.clean_mask, inputs.metric, mode=config.mode,
                              reference_ids=ref_ids, reference_mask=ref_mask, seed=config.seed, max_rows=config.max_rows)


register_method(Ablation())
