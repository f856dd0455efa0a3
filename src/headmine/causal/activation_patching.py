"""Activation patching per head (all positions, or one position at a time), noising and denoising.

Noising: run the clean prompts, patch one head's z from the corrupted run; the metric drop shows
what the head carries. Denoising: run the corrupted prompts, patch z from the clean run; the
recovery shows which heads suffice. Clean and corrupted prompts must have equal token lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headmine.causal.ablation import reference_z
from headmine.causal.engine import run_with_interventions
from headmine.causal.fast_sweep import PrefixCache, head_variants, sweep_variants
from headmine.causal.interventions import PatchFrom
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric, HeadEffects
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel

DIRECTIONS = ("noising", "denoising")


def check_pairs(clean_ids: torch.Tensor, clean_mask: torch.Tensor, corrupted_ids: torch.Tensor, corrupted_mask: torch.Tensor) -> None:
    """InputError naming the first prompt pair whose clean and corrupted token lengths differ."""
    if clean_ids.shape[0] != corrupted_ids.shape[0]:
        raise InputError(f"{clean_ids.shape[0]} clean prompts but {corrupted_ids.shape[0]} corrupted ones",
                         "give one corrupted prompt per clean prompt")
    lc, lr = clean_mask.sum(1), corrupted_mask.sum(1)
    bad = (lc != lr).nonzero()
    if len(bad) or clean_ids.shape != corrupted_ids.shape:
        i = int(bad[0]) if len(bad) else 0
        raise InputError(
            f"prompt {i}: the clean prompt is {int(lc[i])} tokens but the corrupted prompt is {int(lr[i])}",
            "patching needs clean and corrupted prompts of equal token length (swap single-token words)",
        )


def activation_patching(
    loaded: LoadedModel,
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor | None,
    corrupted_ids: torch.Tensor,
    corrupted_mask: torch.Tensor | None,
    metric: AnswerMetric,
    *,
    direction: str = "noising",
    per_position: bool = False,
    heads: Sequence[HeadId] | None = None,
    fast: bool = True,
    max_rows: int = 512,
) -> HeadEffects:
    """Metric with each head's z patched from the other run.

    ``values`` is [L, H, B], or [L, H, T, B] with ``per_position``; ``baseline`` is the metric of the
    run patched into (clean for noising), ``reference`` that of the source run.
    """
    if direction not in DIRECTIONS:
        raise InputError(f"unknown patching direction {direction!r}", f"use one of {DIRECTIONS}")
    clean_mask = torch.ones_like(clean_ids) if clean_mask is None else clean_mask
    corrupted_mask = torch.ones_like(corrupted_ids) if corrupted_mask is None else corrupted_mask
    check_pairs(clean_ids, clean_mask, corrupted_ids, corrupted_mask)
    base_ids, base_mask, src_ids, src_mask = (
        (clean_ids, clean_mask, corrupted_ids, corrupted_mask) if direction == "noising"
        else (corrupted_ids, corrupted_mask, clean_ids, clean_mask)
    )
    g = loaded.geometry
    t = base_ids.shape[1]
    src = reference_z(loaded, src_ids, src_mask)
    reference = metric(run_with_interventions(loaded, src_ids, src_mask)).cpu()
    variants = head_variants(loaded, heads, per_position=t if per_position else None)
    shape = (g.n_layers, g.n_heads, t, metric.n) if per_position else (g.n_layers, g.n_heads, metric.n)
    out = torch.full(shape, float("nan"))
    if fast:
        cache = PrefixCache(loaded, base_ids, base_mask)
        baseline = metric(cache.logits).cpu()
        res = sweep_variants(cache, metric, variants, lambda layer: src.z[layer][None], max_rows=max_rows)
    else:
        baseline = metric(run_with_interventions(loaded, base_ids, base_mask)).cpu()
        rows = []
        for v in variants:
            iv = PatchFrom(heads=(HeadId(v.layer, v.head),), source={v.layer: src.z[v.layer]},
                           positions=None if v.position is None else (v.position,))
            rows.append(metric(run_with_interventions(loaded, base_ids, base_mask, [iv])).cpu())
        res = torch.stack(rows)
    for v, row in zip(variants, res, strict=True):
        if v.position is None:
            out[v.layer, v.head] = row
        else:
            out[v.layer, v.head, v.position] = row
    return HeadEffects(method=f"patching_{direction}", metric=metric.kind, values=out, baseline=baseline, reference=reference)


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, kw_only=True)
class PatchingConfig(MethodConfig):
    """``direction``: noising (clean run, corrupted z) | denoising; ``per_position``: one position at a time."""

    direction: str = "noising"
    per_position: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.direction not in DIRECTIONS:
            raise InputError(f"unknown patching direction {self.direction!r}", f"use one of {DIRECTIONS}")


class ActivationPatching(CausalMethod[PatchingConfig]):
    """Each head's z patched between clean and corrupted prompts of equal token length."""

    name = "patching"
    run_kind = "patching"
    config_cls = PatchingConfig

    def needs_corrupted(self, config: PatchingConfig) -> bool:
        return True

    def run(self, lm: LoadedModel, config: PatchingConfig, inputs: CausalInputs) -> HeadEffects:
        corrupted_ids, corrupted_mask = inputs.corrupted(self.name)
        return activation_patching(lm, inputs.clean_ids, inputs.clean_mask, corrupted_ids, corrupted_mask, inputs.metric,
                                   direction=config.direction, per_position=config.per_position, max_rows=config.max_rows)


register_method(ActivationPatching())
