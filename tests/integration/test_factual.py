"""The factual-recall analysis on SmolLM2 and Gemma 3 270M: the papers' qualitative claims (each with a
margin), the held-out facts kept out of every choice of the mitigation, the atlas, and bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from headmine.atlas import Atlas, write_job
from headmine.causal.factual_recall import answer_trajectory, argument_passing_heads, check_heads
from headmine.core.errors import HeadmineError
from headmine.pipeline import factual as pf
from headmine.pipeline.factual import FactualConfig, build_prompts, choose_on_train, run_factual
from headmine.tasks import natural_text

pytestmark = pytest.mark.slow

SMALL = FactualConfig(relations=["country_capital", "country_language", "object_colour"], heldout_relations=["object_colour"],
                      n_per_relation=5, shots=2, corpus_windows=2, window_len=32, top_k=2,
                      max_senders=6, max_pairs=10, max_train=12, factors=(0.0,))


def test_factual_smollm2_mitigation_is_a_function_of_the_training_facts(smollm2, monkeypatch, tmp_path) -> None:
    """End to end on SmolLM2: run_factual hands the choice only the training prompts (and the first half of
    the corpus windows). Then the held-out set is perturbed (another held-out relation, and one held-out fact
    fewer in every other relation) with the training facts unchanged: the training prompts are the same
    tokens, the held-out prompts differ, and the chosen mitigation is the same, candidate by candidate."""
    seen = []
    real_choose = pf.choose_on_train

    def spy(lm, cfg, train, corpus_ids):
        seen.append((set(train.meta["split"]), int(corpus_ids.shape[0])))
        return real_choose(lm, cfg, train, corpus_ids)

    monkeypatch.setattr(pf, "choose_on_train", spy)
    rep = run_factual(smollm2, SMALL)
    monkeypatch.undo()
    assert seen == [({"train"}, SMALL.corpus_windows // 2)]
    sel = rep.mitigation["selection"]
    prompts = build_prompts(smollm2, SMALL)
    train = prompts.splits["train"]
    assert sel["split"] == "train" and sel["n_prompts"] == len(train) == rep.mitigation["train"]["n"]
    assert set(rep.mitigation["facts"]["train"]) == {"country_capital", "country_language"}
    assert rep.mitigation["heldout_relations"]["n"] > 0 and rep.mitigation["heldout_facts"]["n"] > 0
    # the argument-passing check runs on the pairs that did not rank the heads (odd rows; even rows rank)
    rank, held = pf.split_pairs(len(prompts.clean0))
    assert not set(rank) & set(held) and len(held) >= pf.MIN_CHECK_PAIRS
    check = rep.argument["check"]
    assert check["split"].startswith("held-out") and check["n_check"] == len(held)
    assert rep.argument["n"] == min(len(rank), SMALL.max_pairs)
    assert check["top_heads"] == rep.argument["check_in_sample"]["top_heads"]

    real_split = pf.split_relation_facts

    def fewer_heldout(*args, **kwargs):
        out = real_split(*args, **kwargs)
        out["heldout_facts"] = {r: s[1:] for r, s in out["heldout_facts"].items()}
        return out

    monkeypatch.setattr(pf, "split_relation_facts", fewer_heldout)
    other = replace(SMALL, relations=["country_capital", "country_language", "landmark_country"],
                    heldout_relations=["landmark_country"])
    perturbed = build_prompts(smollm2, other)
    monkeypatch.undo()
    assert perturbed.facts["train"] == prompts.facts["train"]
    for rel, subjects in prompts.facts["heldout_facts"].items():
        assert perturbed.facts["heldout_facts"][rel] == subjects[1:] and subjects[0] not in perturbed.facts["train"][rel]
    assert torch.equal(perturbed.splits["train"].input_ids, train.input_ids)
    assert perturbed.splits["heldout_facts"].texts != prompts.splits["heldout_facts"].texts
    assert perturbed.splits["heldout_relations"].texts != prompts.splits["heldout_relations"].texts
    corpus = natural_text(smollm2.tokenizer, n=SMALL.corpus_windows, seq_len=SMALL.window_len, seed=SMALL.seed).input_ids
    chosen2, rows2, _ = choose_on_train(smollm2, other, perturbed.splits["train"], corpus[:1])
    assert chosen2.name == rep.chosen.name and chosen2.head_scales == rep.chosen.head_scales
    assert [r["name"] for r in rows2] == [r["name"] for r in rep.mitigation_candidates]
    assert [r["train_dlogp"] for r in rows2] == pytest.approx([r["train_dlogp"] for r in rep.mitigation_candidates], abs=1e-6)

    run_id = write_job(rep, tmp_path / "atlas.db")
    with Atlas.open(tmp_path / "atlas.db") as db:
        assert db.run(run_id).kind == "factual"
        inputs = db.inputs(run_id)
        assert len(inputs) == len(rep.inputs)
        assert {row.meta["split"] for row in inputs} == {"train", "heldout_facts", "heldout_relations"}
        assert db.artifact(run_id, "summary")["mitigation"]["selection"]["n_prompts"] == len(train)
        assert {"factual_trajectory", "factual_argument_passing", "factual_mlp_decomposition",
                "factual_suppression"} <= set(db.scores(run_id=run_id)["method"])


def test_gemma3_final_layer_drops_the_answer_on_most_prompts(gemma3) -> None:
    """Lv et al.: the final layer lowers the answer's probability (anti-overconfidence). Gemma 3 270M shows
    the drop on at least half of the factual prompts (measured: see the issue-10 note)."""
    cfg = FactualConfig(relations=["country_capital", "country_language"], heldout_relations=["country_language"],
                        n_per_relation=6, shots=2)
    prompts = build_prompts(gemma3, cfg).all
    traj = answer_trajectory(gemma3, prompts, batch_size=8)
    assert len(prompts) >= 16
    assert traj.drop_share() >= 0.5, traj.summary()


def test_argument_passing_head_beats_random_heads_on_other_prompts(smollm2) -> None:
    """Lv et al.: a head moves the subject to the last position. The top argument-passing head, ranked on
    half of the subject-swap pairs, patched from the swapped run on the other half moves the answer more
    than random single heads, with a 95% paired bootstrap CI over those prompts that excludes zero
    (measured: see the issue-10 note)."""
    cfg = FactualConfig(relations=["country_capital"], heldout_relations=[], n_per_relation=48, shots=0, test_frac=0.5)
    prompts = build_prompts(smollm2, cfg)
    rows = list(range(len(prompts.clean0)))
    rank, check = rows[0::2], rows[1::2]
    assert len(check) >= 12
    res = argument_passing_heads(smollm2, prompts.clean0.select(rank), corrupted=prompts.corrupt0.select(rank), top_k=1,
                                 n_random=0, max_senders=8, max_pairs=None)
    c = check_heads(smollm2, prompts.clean0.select(check), prompts.corrupt0.select(check), res.top(1), n_random=8)
    assert c["top_minus_random_ci"][0] > 0, c
    assert c["top_k_effect"] > c["random_k_effect_mean"] + 0.05, c


def test_factual_bad_relation_files(smollm2, tmp_path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("# template: The capital of {subject} is\n")
    multi = tmp_path / "multi.tsv"
    multi.write_text("# template: The capital of {subject} is\nFrance\tParis\nAustralia\tCanberraXYZQ\n")
    for path, pattern in ((empty, "no \\(subject, answer\\) lines"), (multi, "not one")):
        with pytest.raises(HeadmineError, match=pattern):
            run_factual(smollm2, FactualConfig(relations=[str(path)], n_per_relation=4, shots=0))
