"""SmolLM2 on IOI: the model prefers IO; the fast sweep equals the naive loop on sampled heads;
DLA sums to the logit difference; attribution patching ranks heads like exact patching."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from headmine.causal.ablation import ablation_sweep
from headmine.causal.activation_patching import activation_patching
from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.direct_logit_attribution import direct_logit_attribution
from headmine.causal.methods import get_method
from headmine.core.ids import HeadId
from headmine.pipeline.causal import prepare_inputs

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
SAMPLED = [HeadId(2, 4), HeadId(17, 4), HeadId(29, 1)]


@pytest.fixture(scope="module")
def ioi(smollm2):
    patching = get_method("patching")
    return prepare_inputs(smollm2, patching, patching.config(task="ioi", n=8))


def test_ioi_preference_and_dla_sum(smollm2, ioi):
    dla = direct_logit_attribution(smollm2, ioi.clean_ids, ioi.clean_mask, ioi.metric)
    assert float((dla.total > 0).float().mean()) >= 0.75  # IO preferred over S on most prompts
    assert torch.allclose(dla.component_sum(), dla.total, atol=1e-2)


def test_fast_sweeps_equal_naive_on_sampled_heads(smollm2, ioi):
    fast = ablation_sweep(smollm2, ioi.clean_ids, ioi.clean_mask, ioi.metric, heads=SAMPLED)
    naive = ablation_sweep(smollm2, ioi.clean_ids, ioi.clean_mask, ioi.metric, heads=SAMPLED, fast=False)
    for h in SAMPLED:
        assert torch.allclose(fast.values[h.layer, h.head], naive.values[h.layer, h.head], atol=1e-4)
    a = (smollm2, ioi.clean_ids, ioi.clean_mask, ioi.corrupted_ids, ioi.corrupted_mask, ioi.metric)
    fast_p = activation_patching(*a, heads=SAMPLED[1:])
    naive_p = activation_patching(*a, heads=SAMPLED[1:], fast=False)
    for h in SAMPLED[1:]:
        assert torch.allclose(fast_p.values[h.layer, h.head], naive_p.values[h.layer, h.head], atol=1e-4)


def test_attribution_ranks_heads_like_exact_patching(smollm2, ioi):
    a = (smollm2, ioi.clean_ids, ioi.clean_mask, ioi.corrupted_ids, ioi.corrupted_mask, ioi.metric)
    att = attribution_patching(*a)
    g = smollm2.geometry
    # exact patching on the 8 heads attribution ranks highest plus 8 spread over the model (cost control)
    top = [HeadId(layer, head) for layer, head, _ in att.top(8)]
    spread = [h for h in g.heads()[:: g.n_total_heads // 8] if h not in top][:8]
    heads = top + spread
    exact = activation_patching(*a, heads=heads)
    x = [float(att.effects[h.layer, h.head]) for h in heads]
    y = [float(exact.effects[h.layer, h.head]) for h in heads]
    rho = spearmanr(x, y).correlation
    assert rho > 0.3, rho
