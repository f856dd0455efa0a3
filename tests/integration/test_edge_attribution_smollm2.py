"""EAP-IG on SmolLM2-135M (grouped-query attention, 3 KV heads) on IOI: a circuit of 5000 of its 70,651
edges is faithful on held-out prompts, and the top edges that matter when patched exactly have the sign
and about the size their score says.

Measured (4 scored + 4 held-out prompts, 5 IG steps; bench/results/eap.md): faithfulness 0.47 at 5000
edges, completeness 1.00; of the 8 top edges, L23H3->logits scores -2.90 against -2.88 exactly, while
the edges out of M11 score |2..4.6| but change the metric by < 0.2 when patched (a known failure of
the linearisation there, reported in the bench note), hence the check on edges that matter only.
"""

from __future__ import annotations

import pytest

from headmine.causal.edge_attribution import EdgeAttributionConfig
from headmine.pipeline.causal import run_causal

pytestmark = pytest.mark.slow

FAITHFULNESS_FLOOR = 0.4  # measured 0.47


def test_eap_ig_circuit_is_faithful_and_top_edges_agree_with_exact_patching(smollm2) -> None:
    config = EdgeAttributionConfig(task="ioi", n=8, steps=5, edges="5000", batch_size=4, check_top=8, check_random=0)
    s = run_causal(smollm2, config).result.artifacts()["eap_summary"]
    assert s["graph"]["n_kv_heads"] == 3 and s["graph"]["receivers"] == 30 * (9 + 2 * 3 + 1) + 1
    held = s["held_out"]
    assert held["clean"] - held["corrupted"] > 1.0  # IOI works on SmolLM2: there is something to explain
    point = s["curves"][0]
    assert point["n"] == 5000 and point["kept"] <= 5000
    assert point["faithfulness"] > FAITHFULNESS_FLOOR and point["completeness"] > 0.9
    check = s["check"]
    matter = [(est, ex) for est, ex in zip(check["estimate"], check["exact"], strict=True) if abs(ex) > 0.5]
    assert matter, "no top edge changes the metric by more than 0.5 when patched exactly"
    for est, ex in matter:
        assert est * ex > 0 and abs(est - ex) < 0.25 * abs(ex)
