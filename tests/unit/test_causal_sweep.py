"""Fast exact sweeps equal the naive loop on tiny random models (CPU)."""

from __future__ import annotations

import pytest
import torch

from headmine.causal.ablation import ablation_sweep
from headmine.causal.metrics import AnswerMetric
from tests.tiny_models import VOCAB, tiny_model

torch.set_num_threads(1)
FAMILIES = ["llama-gqa", "gpt2-mha", "gemma3-mqa", "qwen2-gqa", "gpt_neox-mha", "opt-mha"]


def _inputs(b: int = 3, t: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one right-padded row
    end = mask.sum(1) - 1
    metric = AnswerMetric(kind="logit_diff", end_pos=end, target_id=torch.randint(0, VOCAB, (b,), generator=g),
                          wrong_id=torch.randint(0, VOCAB, (b,), generator=g))
    return ids, mask, metric


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_fast_sweep_equals_naive(family: str, mode: str) -> None:
    lm = tiny_model(family)
    ids, mask, metric = _inputs()
    fast = ablation_sweep(lm, ids, mask, metric, mode=mode, fast=True, max_rows=7)  # forces several chunks
    naive = ablation_sweep(lm, ids, mask, metric, mode=mode, fast=False)
    assert torch.allclose(fast.baseline, naive.baseline, atol=1e-5)
    assert torch.allclose(fast.values, naive.values, atol=1e-5), (fast.values - naive.values).abs().max()
    assert fast.deltas.abs().max() > 0


def test_metric_kinds() -> None:
    logits = torch.randn(4, 3, 10)
    m = AnswerMetric(kind="prob", end_pos=torch.tensor([2, 1]), target_id=torch.tensor([3, 4]))
    p = m(logits)
    assert p.shape == (4,)
    assert torch.allclose(p[2], torch.softmax(logits[2, 2], -1)[3])
    assert torch.allclose(p[1], torch.softmax(logits[1, 1], -1)[4])
