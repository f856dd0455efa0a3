"""SmolLM2 on IOI, one qualitative claim of Wang et al. 2022 (§3.2, Fig. 4): the S-inhibition heads, found by
their defining test (path patching from each earlier head into the name movers' queries), matter for the
behaviour: mean-ablating them on HELD-OUT prompts lowers the logit difference far more than random heads of
the same number do.

The receivers are the name movers of the stored run (bench/results/ioi_roles.md: L23H0, L23H2); the test first
checks that they carry the name-mover signature on these prompts (END attends to IO more than to S1 and S2,
their OV circuit copies names), so a changed checkpoint or capture cannot pass silently. The S-inhibition heads
are then *found* here (the role's selection rule over every sender in layers 14-22), not taken from the run.
Cost control: senders in layers 14-22 only (81 of the 207 heads before the name movers; the stored run's
S-inhibition heads are L20H0 and L19H2), 8 fit and 8 held-out prompts, 15 random groups (the run: 16/16, 30).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headmine.causal.fast_sweep import PrefixCache
from headmine.causal.ioi_circuit_eval import IOIBatch, abc_means, row_values
from headmine.causal.ioi_roles import attention_signatures, copy_scores, select, versus_random
from headmine.causal.path_patching import path_patching
from headmine.core.ids import HeadId
from headmine.tasks.ioi import ioi

pytestmark = pytest.mark.slow
torch.set_num_threads(1)
NAME_MOVERS = [HeadId(23, 0), HeadId(23, 2)]
FIRST_SENDER_LAYER = 14


def test_s_inhibition_heads_found_by_path_patching_beat_random_heads_on_held_out_prompts(smollm2):
    lm, g = smollm2, smollm2.geometry
    fit = IOIBatch.of(ioi(lm.tokenizer, n=8, seed=0))
    held = IOIBatch.of(ioi(lm.tokenizer, n=8, seed=1))

    # the receivers are name movers on these prompts: END->IO attention above END->S1/S2, names copied
    sig = attention_signatures(lm, fit)
    copies = copy_scores(lm, fit, NAME_MOVERS)
    for h in NAME_MOVERS:
        io = sig["attn_END->IO"][h.layer, h.head]
        assert io > sig["attn_END->S1"][h.layer, h.head] and io > sig["attn_END->S2"][h.layer, h.head], h
        assert copies[h][0] >= 0.5, (h, copies[h])

    # the defining test: path patching (ABC senders) into the name movers' queries, from layers 14-22
    senders = [h for h in g.heads() if FIRST_SENDER_LAYER <= h.layer < 23]
    eff = path_patching(lm, fit.ids, fit.mask, fit.corr_ids, fit.corr_mask, fit.metric, senders=senders,
                        receivers=NAME_MOVERS, receiver_input="q")
    ld = float(eff.baseline.mean())
    assert ld > 1.0  # SmolLM2 does IOI (stored run: 3.99 on 16 prompts)
    eligible = torch.zeros(g.n_layers, g.n_heads, dtype=torch.bool)
    eligible[FIRST_SENDER_LAYER:23] = True
    s_inh, tau, rel = select(eff.values - eff.baseline, ld, eligible, -1, floor=0.02, mad_k=3.0, max_n=8)
    assert s_inh, f"no S-inhibition head passed tau={tau:.3f}; strongest {float(rel[FIRST_SENDER_LAYER:23].min()):+.3f}"
    assert all(FIRST_SENDER_LAYER <= h.layer < 23 for h in s_inh)

    # held-out: the group mean-ablated (per-template ABC means) vs random groups of the same size
    means = abc_means(lm, sorted(set(held.template.tolist())), n_per_template=8, seed=1000)
    cache = PrefixCache(lm, held.ids, held.mask)
    held_ld = float(held.metric(cache.logits).mean())
    res = versus_random(cache, held, s_inh, row_values(means, held), g.heads(), g.n_heads, n_random=15, seed=0,
                        max_rows=256)
    hi = res["delta_ld_ci"][1]
    # margins: the CI lies below zero, the drop is a quarter of the held-out LD or more (stored run: -2.5 of
    # 4.7), and 95% of the random groups move it by less than half as much
    assert hi < 0, res
    assert res["delta_ld"] < -0.25 * held_ld, (res, held_ld)
    assert res["share_random_as_large"] == 0.0 and res["random_q95_abs"] < 0.5 * abs(res["delta_ld"]), res
    assert res["beats_random"]
    assert np.isfinite(tau) and tau >= 0.02
