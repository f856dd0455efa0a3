"""The factual-recall analysis end to end on SmolLM2 and Gemma 3 270M (small prompt sets), plus bad input."""

from __future__ import annotations

import math

import pytest

from headmine.atlas import Atlas, write_job
from headmine.core.errors import HeadmineError
from headmine.pipeline.factual import FactualConfig, run_factual

SMALL = FactualConfig(relations=["country_capital", "country_language", "object_colour"], heldout_relations=["object_colour"],
                      n_per_relation=5, shots=2, corpus_windows=2, window_len=32, top_k=2,
                      max_senders=6, max_pairs=10, max_train=12, factors=(0.0,))


def _check(rep, lm, tmp_path) -> None:
    g = lm.geometry
    assert len(rep.trajectory["mean_prob_by_layer"]) == g.n_layers + 1
    assert 0.0 <= rep.trajectory["drop_share_last"] <= 1.0
    assert rep.argument["table"] and math.isfinite(rep.argument["check"]["top_k_effect"])
    assert len(rep.mlp_scan) == g.n_layers and all(r["r2"] <= 1.0 + 1e-9 for r in rep.mlp_scan)
    assert len(rep.suppression["first_token_attention"]) == g.n_heads
    for split in ("heldout_facts", "heldout_relations"):
        lo, hi = rep.mitigation[split]["dprob_ci"]
        assert lo <= rep.mitigation[split]["dprob"] <= hi
    run_id = write_job(rep, tmp_path / "atlas.db")
    with Atlas.open(tmp_path / "atlas.db") as db:
        assert db.run(run_id).kind == "factual"
        assert db.run(run_id).model_info["geometry"]["n_layers"] == g.n_layers
        assert len(db.inputs(run_id)) == len(rep.inputs)
        assert db.artifact(run_id, "summary")["mitigation"]["mitigation"] == rep.chosen.name
        scores = db.scores(run_id=run_id)
        assert {"factual_trajectory", "factual_argument_passing", "factual_mlp_decomposition",
                "factual_suppression"} <= set(scores["method"])
    js, _ = rep.chosen.save(tmp_path / "mitigation")
    assert js.exists()


@pytest.mark.slow
def test_factual_smollm2(smollm2, tmp_path) -> None:
    rep = run_factual(smollm2, SMALL)
    _check(rep, smollm2, tmp_path)


@pytest.mark.slow
def test_factual_gemma3(gemma3, tmp_path) -> None:
    rep = run_factual(gemma3, SMALL)
    _check(rep, gemma3, tmp_path)


@pytest.mark.slow
def test_factual_bad_relation_files(smollm2, tmp_path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("# template: The capital of {subject} is\n")
    multi = tmp_path / "multi.tsv"
    multi.write_text("# template: The capital of {subject} is\nFrance\tParis\nAustralia\tCanberraXYZQ\n")
    for path, pattern in ((empty, "no \\(subject, answer\\) lines"), (multi, "not one")):
        with pytest.raises(HeadmineError, match=pattern):
            run_factual(smollm2, FactualConfig(relations=[str(path)], n_per_relation=4, shots=0))
