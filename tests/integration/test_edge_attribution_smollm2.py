"""EAP-IG on SmolLM2-135M (grouped-query attention, 3 KV heads) on IOI: a small circuit is faithful on
held-out prompts, and the top edges move the metric the way exact edge patching says."""

from __future__ import annotations

import pytest

from headmine.causal.edge_attribution import EdgeAttributionConfig
from headmine.pipeline.causal import run_causal

pytestmark = pytest.mark.slow

# measured (bench/results/eap.md): 4 scored + 4 held-out IOI prompts, 2 IG steps, 200 edges -> FAITH_MEASURED
N_EDGES = 200
FAITHFULNESS_FLOOR = 0.5


def test_eap_ig_circuit_is_faithful_and_top_edges_agree_with_exact_patching(smollm2) -> None:
    config = EdgeAttributionConfig(task="ioi", n=8, steps=2, edges=str(N_EDGES), batch_size=4, check_top=5, check_random=0)
    run = run_causal(smollm2, config)
    s = run.result.artifacts()["eap_summary"]
    assert s["graph"]["n_kv_heads"] == 3 and s["graph"]["receivers"] == 30 * (9 + 2 * 3 + 1) + 1
    held = s["held_out"]
    assert held["clean"] - held["corrupted"] > 1.0  # IOI works on SmolLM2: there is something to explain
    point = s["curves"][0]
    assert point["n"] == N_EDGES and point["kept"] <= N_EDGES
    assert point["faithfulness"] > FAITHFULNESS_FLOOR
    check = s["check"]
    assert check["sign_agreement"] >= 0.8  # of the 5 top edges, at most one disagrees in sign
    assert all(abs(x) > 0.05 for x in check["exact"])  # the top edges matter when patched exactly
