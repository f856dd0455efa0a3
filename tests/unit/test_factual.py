"""Factual-recall analyses on a hand-wired 2-layer Llama with a planted mechanism.

The toy (d_model 32, 4 heads of 8, vocabulary 24, no tokenizer):
- tokens: 0 BOS, 1-4 subjects, 5-8 answers of relation A, 9-12 answers of relation B, 13 relation A
  cue, 14 relation B cue, 15-23 "frequent" filler tokens.
- L0H0 (the planted argument mover) attends from every position to the subject token and copies its
  identity (dims 5-8). L0H1-3 attend uniformly and write filler noise (dims 25-27).
- MLP 0 amplifies the subject identity (beta > 0 on L0H0) and adds a relation-specific constant: the
  answer-class direction (dim 13 for A, 14 for B) -> the planted task intercept.
- Answers unembed as subject identity + class direction (answer = f(subject) by addition).
- L1H0 (the planted suppressor) attends to BOS and writes -class +generic: it lowers every answer in
  the final layer and promotes the frequent filler tokens (they read the generic dim 15).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from headmine.causal.factual_recall import (
    Mitigation,
    answer_scores,
    answer_trajectory,
    argument_passing_heads,
    check_heads,
    choose_mitigation,
    decompose_mlp,
    evaluate_mitigation,
    final_layer_suppression,
    mitigated,
    split_facts,
    split_relation_facts,
    subject_swaps,
)
from headmine.core.errors import TaskError
from headmine.core.ids import HeadId
from headmine.core.provenance import ModelProvenance
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from headmine.pipeline.factual import FactualConfig, build_prompts
from headmine.tasks.base import TokenBatch, pad_batch
from headmine.tasks.factual import builtin_relation
from tests.tiny_models import blank_llama

BOS, SUBJ, ANS_A, ANS_B, REL_A, REL_B, FILL = 0, 1, 5, 9, 13, 14, 15
D, NH, DH = 32, 4, 8


def build_toy(suppress: float = 1.0) -> LoadedModel:
    model = blank_llama(d_model=D, n_heads=NH, d_head=DH)
    m = model.model
    with torch.no_grad():
        E = m.embed_tokens.weight
        E[:, 0] = 1.0                                   # constant feature
        E[BOS, 2] = 1.0                                 # is-BOS
        for i in range(4):
            E[SUBJ + i, 1] = 1.0                        # is-subject
            E[SUBJ + i, 5 + i] = 1.0                    # subject identity
        E[REL_A, 3] = 1.0
        E[REL_B, 4] = 1.0
        for j in range(9):
            E[FILL + j, 16 + j] = 1.0
        a0, a1 = m.layers[0].self_attn, m.layers[1].self_attn
        a0.q_proj.weight[0 * DH + 3, 0] = 2.5           # L0H0: query = constant
        a0.k_proj.weight[0 * DH + 3, 1] = 2.5           #        key = is-subject
        for i in range(4):
            a0.v_proj.weight[0 * DH + i, 5 + i] = 1.0   #        value = subject identity
            a0.o_proj.weight[5 + i, 0 * DH + i] = 1.0   #        written back to the identity dims
        for h in (1, 2, 3):                             # L0H1-3: uniform attention, filler noise
            for j in range(9):
                a0.v_proj.weight[h * DH, 16 + j] = float((j * h) % 4) - 1.5
            a0.o_proj.weight[24 + h, h * DH] = 1.0
        mlp = m.layers[0].mlp
        for i in range(4):                              # amplify the moved subject
            mlp.gate_proj.weight[i, 5 + i] = 3.0
            mlp.up_proj.weight[i, 0] = 1.0
            mlp.down_proj.weight[5 + i, i] = 0.25
        for u, rel_dim, cls_dim in ((4, 3, 13), (5, 4, 14)):  # relation-specific intercept
            mlp.gate_proj.weight[u, rel_dim] = 3.0
            mlp.up_proj.weight[u, 0] = 1.0
            mlp.down_proj.weight[cls_dim, u] = 0.4
        a1.q_proj.weight[0 * DH + 3, 0] = 2.5           # L1H0: attends to BOS
        a1.k_proj.weight[0 * DH + 3, 2] = 2.5
        a1.v_proj.weight[0 * DH + 0, 0] = 1.0
        a1.o_proj.weight[13, 0] = -1.2 * suppress       # suppress both answer classes
        a1.o_proj.weight[14, 0] = -1.2 * suppress
        a1.o_proj.weight[15, 0] = 0.8 * suppress        # promote the generic (frequent) direction
        U = model.lm_head.weight                        # [vocab, d]
        for i in range(4):
            U[SUBJ + i, 5 + i] = 0.6
            U[ANS_A + i, 5 + i] = 1.0
            U[ANS_A + i, 13] = 1.0
            U[ANS_B + i, 5 + i] = 1.0
            U[ANS_B + i, 14] = 1.0
        for j in range(9):
            U[FILL + j, 15] = 1.0
            U[FILL + j, 16 + j] = 0.3
    prov = ModelProvenance(name="toy-factual", source="in-process", source_kind="hand-set", model_type="llama")
    return LoadedModel(name="toy-factual", model=model, tokenizer=None, adapter=adapter_for(model), provenance=prov)


def toy_facts(relations: tuple[str, ...] = ("A", "B"), n_fill: int = 3, seed: int = 0) -> TokenBatch:
    """Prompts BOS f.. SUBJ f.. REL (answer = the subject's answer for that relation)."""
    rng = np.random.default_rng(seed)
    rows, meta = [], {"target_id": [], "subject_span": [], "relation": [], "end_pos": []}
    for rel in relations:
        for i in range(4):
            for _ in range(3):
                pre = [FILL + int(x) for x in rng.integers(0, 9, n_fill)]
                post = [FILL + int(x) for x in rng.integers(0, 9, 2)]
                ids = [BOS, *pre, SUBJ + i, *post, REL_A if rel == "A" else REL_B]
                rows.append(ids)
                meta["target_id"].append((ANS_A if rel == "A" else ANS_B) + i)
                meta["subject_span"].append([1 + n_fill, 2 + n_fill])
                meta["relation"].append(rel)
                meta["end_pos"].append(len(ids) - 1)
    ids, mask = pad_batch(rows, 0)
    return TokenBatch(input_ids=ids, attention_mask=mask, task="toy-factual",
                      meta={"target_id": torch.tensor(meta["target_id"]), "end_pos": torch.tensor(meta["end_pos"]),
                            "subject_span": torch.tensor(meta["subject_span"]), "relation": meta["relation"]})


@pytest.fixture(scope="module")
def toy() -> LoadedModel:
    return build_toy()


@pytest.fixture(scope="module")
def facts() -> TokenBatch:
    return toy_facts()


def test_trajectory_finds_planted_last_layer_drop(toy: LoadedModel, facts: TokenBatch) -> None:
    traj = answer_trajectory(toy, facts, batch_size=7)
    assert traj.prob.shape == (len(facts), 3)
    logits = toy.forward(facts.input_ids, facts.attention_mask)
    final = torch.softmax(logits[torch.arange(len(facts)), facts.meta["end_pos"]], -1)
    assert torch.allclose(traj.prob[:, -1], final.gather(1, facts.meta["target_id"][:, None])[:, 0], atol=1e-5)
    assert traj.drop_share() == 1.0                     # the planted suppressor lowers every answer
    assert (traj.rank[:, 1] == 0).all()                 # after the mover + MLP the answer is top-1
    clean = answer_trajectory(build_toy(suppress=0.0), facts)
    assert clean.drop_share() == 0.0
    assert set(traj.groups()) == {"A/0", "B/0"}


def test_argument_passing_finds_planted_mover(toy: LoadedModel, facts: TokenBatch) -> None:
    res = argument_passing_heads(toy, facts, top_k=1, n_random=3)
    assert res.ranked[0] == HeadId(0, 0)
    assert res.path_effect[0, 0] > 0.9
    assert res.path_effect.flatten()[1:].abs().max() < 0.05
    assert res.attn_subject[0, 0] > 0.95
    assert res.decode_acc[0, 0] == 1.0 and res.decode_acc[0, 1] < 0.6
    assert res.check["top_k_effect"] > 0.9 and abs(res.check["random_k_effect_mean"]) < 0.1
    screened = argument_passing_heads(toy, facts, top_k=1, n_random=1, max_senders=2, max_pairs=10)
    assert screened.ranked[0] == HeadId(0, 0) and int(torch.isnan(screened.path_effect).sum()) == 6
    assert screened.n == 10 and screened.check["swept"] == 2


def test_check_heads_on_other_prompts_finds_the_mover_and_matches_the_inline_check(toy: LoadedModel) -> None:
    """Rank on one set of prompts, check on another: the planted mover carries the whole swap effect on
    prompts it was not chosen on, a random filler head none; on the ranking prompts themselves
    check_heads reproduces argument_passing_heads' own check exactly."""
    pairs = subject_swaps(toy_facts(seed=2), seed=1)
    clean = replace(pairs.clean, meta=pairs.clean.meta | {"wrong_id": pairs.partner_target})
    res = argument_passing_heads(toy, clean, corrupted=pairs.corrupted, top_k=1, n_random=3, max_senders=None,
                                 max_pairs=None)
    same = check_heads(toy, clean, pairs.corrupted, res.top(1), n_random=3)
    for key in ("top_k_effect", "random_k_effect_mean", "top_minus_random", "top_minus_random_ci"):
        assert same[key] == pytest.approx(res.check[key], abs=1e-6)
    other = subject_swaps(toy_facts(seed=5, n_fill=2), seed=3)
    held = replace(other.clean, meta=other.clean.meta | {"wrong_id": other.partner_target})
    mover = check_heads(toy, held, other.corrupted, [HeadId(0, 0)], n_random=3)
    assert mover["top_k_effect"] > 0.9 and mover["top_minus_random_ci"][0] > 0.5
    filler = check_heads(toy, held, other.corrupted, [HeadId(0, 2)], n_random=3)
    assert abs(filler["top_k_effect"]) < 0.05 and filler["top_minus_random_ci"][1] < 0.1
    with pytest.raises(TaskError, match="wrong_id"):
        check_heads(toy, other.clean, other.corrupted, [HeadId(0, 0)])


def test_mlp_decomposition_finds_amplification_and_intercept(toy: LoadedModel, facts: TokenBatch) -> None:
    dec = decompose_mlp(toy, facts, layer=0)
    assert dec.r2 > 0.9
    beta = dict(zip([str(h) for h in dec.heads], dec.beta.tolist(), strict=True))
    assert beta["L0H0"] > 0.3 and all(abs(beta[f"L0H{h}"]) < 0.05 for h in (1, 2, 3))
    for rel, cls in (("A", ANS_A), ("B", ANS_B)):
        ic = dec.intercepts[rel]
        assert ic.answer_auroc == 1.0 and ic.p_value < 0.01
        assert set(ic.top_tokens[:4]) == set(range(cls, cls + 4))
    assert dec.r2 > dec.r2_intercept_only


def test_suppression_finds_planted_final_head(toy: LoadedModel, facts: TokenBatch) -> None:
    freq = np.zeros(24)
    freq[FILL:] = 10.0                                  # the filler tokens are the frequent ones
    sup = final_layer_suppression(toy, facts, frequency=freq)
    assert sup.first_token_attention[0] > 0.95 and sup.first_token_attention[1] < 0.5
    comp = {c.name: c for c in sup.components}
    assert comp["L1H0"].answer_dla < -1.0 and comp["L1H0"].frequency_corr > 0.3
    assert abs(comp["L1H1"].answer_dla) < 1e-4
    assert sup.suppressors()[0] == "L1H0"


def test_mitigation_removes_planted_suppressor_and_generalises(toy: LoadedModel, tmp_path) -> None:
    facts = toy_facts(seed=1)
    splits = split_facts(facts, heldout_relations=["B"], test_frac=0.5)
    assert set(splits.train.meta["relation"]) == {"A"} and set(splits.heldout_relations.meta["relation"]) == {"B"}
    corpus = torch.tensor([[BOS] + [FILL + (i * 7 + j) % 9 for j in range(15)] for i in range(4)])
    chosen, rows = choose_mitigation(toy, splits.train, corpus, max_cost=10.0)
    assert dict(chosen.head_scales).get(HeadId(1, 0)) == 0.0    # the planted suppressor is switched off
    assert len(rows) >= 8
    ev = evaluate_mitigation(toy, chosen, {"heldout_facts": splits.heldout_facts,
                                           "heldout_relations": splits.heldout_relations}, corpus, n_boot=200)
    for split in ("heldout_facts", "heldout_relations"):
        assert ev[split]["dprob_ci"][0] > 0.2 and ev[split]["top1_after"] == 1.0
    js, _ = chosen.save(tmp_path / "mit")
    again = Mitigation.load(js)
    assert again.head_scales == chosen.head_scales and again.mlp_scales == chosen.mlp_scales
    base = answer_scores(toy, splits.heldout_relations)
    with mitigated(toy, again):
        gen = toy.model.generate(splits.heldout_relations.input_ids[:2, :7], max_new_tokens=1, do_sample=False,
                                 pad_token_id=0)
        during = answer_scores(toy, splits.heldout_relations)
    assert gen.shape[1] == 8
    assert (during["prob"] > base["prob"]).all()
    assert torch.allclose(answer_scores(toy, splits.heldout_relations)["prob"], base["prob"])  # hooks removed


def test_mitigation_identity_when_nothing_helps(tmp_path) -> None:
    lm = build_toy(suppress=0.0)
    facts = toy_facts()
    splits = split_facts(facts, heldout_relations=["B"])
    corpus = torch.tensor([[BOS] + [FILL + j % 9 for j in range(12)]])
    chosen, _ = choose_mitigation(lm, splits.train, corpus, candidates=[Mitigation("scale L1H1 x0", ((HeadId(1, 1), 0.0),))])
    assert chosen.is_identity and chosen.name == "none"
    js, st = Mitigation("dir", remove_directions={1: torch.ones(D)}).save(tmp_path / "d.json")
    assert st is not None and torch.equal(Mitigation.load(js).remove_directions[1], torch.ones(D))


def test_bad_inputs_raise_clear_errors(toy: LoadedModel, facts: TokenBatch) -> None:
    bare = TokenBatch(input_ids=facts.input_ids, attention_mask=facts.attention_mask, meta={"target_id": facts.meta["target_id"]})
    with pytest.raises(TaskError, match="lacks meta"):
        answer_trajectory(toy, bare)
    with pytest.raises(TaskError, match="not in the batch"):
        split_facts(facts, heldout_relations=["C"])
    one = facts.select([0, 1])  # two prompts about the same subject: no swap partner
    with pytest.raises(TaskError, match="partner"):
        argument_passing_heads(toy, one)


def test_concat_and_dedupe(facts: TokenBatch) -> None:
    from headmine.causal.factual_recall.common import concat_batches, dedupe

    short = toy_facts(n_fill=1)
    both = concat_batches([facts, short])
    assert len(both) == len(facts) + len(short) and both.input_ids.shape[1] == facts.input_ids.shape[1]
    assert both.meta["subject_span"].shape == (len(both), 2) and len(both.meta["relation"]) == len(both)
    assert torch.equal(both.input_ids[len(facts):, : short.input_ids.shape[1]], short.input_ids)
    assert len(dedupe(concat_batches([facts, facts]))) == len(dedupe(facts))


def test_split_relation_facts_is_per_relation_and_leaves_training_alone() -> None:
    """Each relation's split depends only on its own facts: changing or adding the held-out relation
    leaves every training fact where it was; a held-out relation goes whole."""
    rel = {"A": [(f"a{i}", "x") for i in range(10)], "B": [(f"b{i}", "y") for i in range(5)], "C": [("c0", "z"), ("c1", "z")]}
    one = split_relation_facts(rel, heldout_relations=["C"], test_frac=0.4, seed=3)
    two = split_relation_facts({**rel, "D": [("d0", "w")]}, heldout_relations=["C", "D"], test_frac=0.4, seed=3)
    three = split_relation_facts({"A": rel["A"], "B": rel["B"], "E": [("e0", "v")] * 3}, heldout_relations=["E"],
                                 test_frac=0.4, seed=3)
    assert one["train"] == two["train"] == three["train"]
    assert one["heldout_facts"] == two["heldout_facts"] == three["heldout_facts"]
    assert one["heldout_relations"] == {"C": ["c0", "c1"]} and set(two["heldout_relations"]) == {"C", "D"}
    assert len(one["heldout_facts"]["A"]) == 4 and len(one["heldout_facts"]["B"]) == 2
    for r in ("A", "B"):
        assert not set(one["train"][r]) & set(one["heldout_facts"][r])
        assert sorted(one["train"][r] + one["heldout_facts"][r]) == sorted(s for s, _ in rel[r])
    assert split_relation_facts(rel, heldout_relations=["C"], seed=4)["train"] != one["train"]
    with pytest.raises(TaskError, match="not among"):
        split_relation_facts(rel, heldout_relations=["Z"])
    with pytest.raises(TaskError, match="every relation is held out"):
        split_relation_facts(rel, heldout_relations=["A", "B", "C"])


def _fact_lines(prompts) -> dict[str, str]:
    """Every statement a prompt can contain, solved (a demonstration) or open (the query), -> its split."""
    out = {}
    for split, by_rel in prompts.facts.items():
        for name, subjects in by_rel.items():
            rel = builtin_relation(name)
            answers = dict(rel.pairs)
            for s in subjects:
                query = rel.template.format(subject=s)
                out[query] = out[f"{query} {answers[s]}."] = split
    return out


def test_no_heldout_fact_in_any_training_prompt(smollm2) -> None:
    """Split first: every line of every prompt (few-shot demonstrations and the query) is a fact of the
    prompt's own split, so no held-out fact, with or without its answer, reaches a training prompt."""
    cfg = FactualConfig(relations=["country_capital", "country_language", "object_colour"],
                        heldout_relations=["object_colour"], n_per_relation=12, shots=3)
    prompts = build_prompts(smollm2, cfg)
    lines = _fact_lines(prompts)
    assert set(prompts.splits) == {"train", "heldout_facts", "heldout_relations"}
    n_lines = 0
    for split, batch in prompts.splits.items():
        assert set(batch.meta["split"]) == {split}
        assert {int(s) for s in batch.meta["shots"]} == {0, 3}
        for text, subject, rel in zip(batch.texts, batch.meta["subject"], batch.meta["relation"], strict=True):
            assert subject in prompts.facts[split][rel]
            for line in text.split("\n"):
                assert lines[line] == split, f"{split} prompt holds a {lines[line]} fact: {line!r}"
                n_lines += 1
    assert n_lines > 3 * len(prompts.splits["train"])  # the demonstrations were checked too
    zero = prompts.clean0.meta["split"]
    assert len(zero) == len(prompts.clean0) and set(zero) == set(prompts.splits)


def test_argument_passing_pairs_split_into_rank_and_check_halves() -> None:
    """run_factual ranks argument-passing heads on even pairs and checks them on odd ones; too few pairs for
    two halves of MIN_CHECK_PAIRS each and both are every row (the check then says it is in-sample)."""
    from headmine.pipeline.factual import MIN_CHECK_PAIRS, split_pairs

    rank, check = split_pairs(11)
    assert rank == [0, 2, 4, 6, 8, 10] and check == [1, 3, 5, 7, 9]
    few = 2 * MIN_CHECK_PAIRS - 1
    assert split_pairs(few) == (list(range(few)), list(range(few)))
