"""Contrastive CHG on SmolLM2 (Nam et al. 2025 §4.4): the paper's claim, on a task the fit never saw.

The gates are fitted (quick preset) to forget the instruction format while keeping the few-shot format on
four word-mapping tasks; accuracies are measured on the held-out task (singular -> plural, never fitted on).
Measured (seed 0, about 90 s on 2 CPU cores): instruction format 100% -> 0% (forgotten), few-shot format
100% -> 56%. So the first half of the claim holds with a wide margin, and the second (retain accuracy drops
by less than 10 points) does NOT hold at this budget: it is kept as a strict expected failure, so the suite
says when a preset starts to meet it. Weighting the retain term 3x (``retain_weight=3``, not the official
loss) trades the halves: few-shot 100% -> 96% (inside 10 points) but instruction only 100% -> 60% (not
forgotten); 48 updates at that weight forget it (100% -> 0%) but lose 24 retain points;
bench/results/chg_contrast.md.
"""

from __future__ import annotations

import pytest

from headmine.causal.contrastive_gating import (
    ContrastConfig,
    builtin_contrast_split,
    fit_contrastive,
    token_accuracy,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def heldout_accuracy(smollm2) -> dict[str, tuple[float, float]]:
    """(before, after) mean token accuracy per format on the held-out task, gates of seed 0."""
    split = builtin_contrast_split(smollm2, forget="instruction", heldout_tasks=("singular_plural",))
    res = fit_contrastive(smollm2, split.retain, split.forget, ContrastConfig.preset_for("quick"))
    assert res.status == "complete", res.message
    gates = res.G[0]
    return {name: (float(token_accuracy(smollm2, d).mean()), float(token_accuracy(smollm2, d, gates).mean()))
            for name, d in (("retain", split.eval_retain), ("forget", split.eval_forget))}


def test_contrastive_chg_forgets_the_instruction_format_on_a_heldout_task(heldout_accuracy) -> None:
    acc = heldout_accuracy
    assert acc["forget"][0] >= 0.5, acc  # the model can do the held-out task in the format to forget
    assert acc["forget"][0] - acc["forget"][1] >= 0.3, acc  # measured: 1.00 -> 0.00


@pytest.mark.xfail(strict=True, reason="quick preset: the few-shot format on the held-out task drops 44 points "
                   "(1.00 -> 0.56, measured), the paper reports < 10; retain_weight 3 keeps it (-4) but "
                   "forgets only 100 -> 60%")
def test_contrastive_chg_keeps_the_retain_format_on_a_heldout_task(heldout_accuracy) -> None:
    acc = heldout_accuracy
    assert acc["retain"][0] - acc["retain"][1] < 0.10, acc
