"""ITI steering (headmine.apply.steer): the shipped data set, a planted head found first, exact checks
of the shift (alpha=0 bit for bit; only the chosen heads and positions move), the artifact applied
during generate, the CLI on a tiny model with a real word-level tokenizer, bad input, and SmolLM2."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from headmine.apply import HeadArtifact, applied, geometry_of, group_split
from headmine.apply.steer import (
    SteerConfig,
    answer_logprobs,
    encode,
    fit_steering,
    last_token_z,
    load_statements,
    mass_mean,
    mc_scores,
    probe_accuracy,
    run_steer,
    steer_positions,
)
from headmine.atlas import Atlas
from headmine.causal import Steer, intervening
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from tests.tiny_models import tiny_model


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models run ~10x faster on one torch thread (threads contend on a busy machine);
    the SmolLM2 test keeps the session's setting."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- the data set


def test_shipped_statements_are_grouped_true_false_questions() -> None:
    st = load_statements()
    assert len(st) >= 400
    assert len({s.topic for s in st}) >= 8
    by_q: dict[int, list] = {}
    for s in st:
        by_q.setdefault(s.group, []).append(s)
    for items in by_q.values():
        assert sum(s.label for s in items) == 1 and 1 <= sum(1 - s.label for s in items) <= 3
        assert len({s.answer for s in items}) == len(items)  # a false answer never repeats the true one
        assert len({s.question for s in items}) == 1
    assert st[0].text == "Q: What is the capital of France? A: Paris."
    fit, held = group_split([s.group for s in st], heldout_frac=0.3, seed=0)
    assert not {st[i].group for i in fit} & {st[i].group for i in held}
    assert load_statements() == st  # the false answers are drawn by a fixed seed


def test_mc_scores_by_hand() -> None:
    lp = np.array([-1.0, -2.0, -0.5, -0.1, -3.0, -4.0])
    mc1, mc2 = mc_scores(lp, [1, 0, 0, 1, 0, 0], [7, 7, 7, 3, 3, 3])
    assert mc1.tolist() == [0.0, 1.0]
    e = np.exp
    assert mc2[0] == pytest.approx(e(-1) / (e(-1) + e(-2) + e(-0.5)))
    assert mc2[1] == pytest.approx(e(-0.1) / (e(-0.1) + e(-3) + e(-4)))


def test_mass_mean_direction_and_scale() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 1, 2, 4, generator=g)
    labels = [i % 2 for i in range(200)]
    z[1::2, 0, 1, 2] += 3.0  # head 1 separates the labels along axis 2
    theta, sigma = mass_mean(z, labels)
    assert theta.norm(dim=-1).sub(1).abs().max() < 1e-5
    assert theta[0, 1, 2] > 0.95
    proj = (z[:, 0, 1] * theta[0, 1]).sum(-1)
    assert sigma[0, 1] == pytest.approx(float(proj.std(correction=0)), rel=1e-5)


# --------------------------------------------------------------------------- planted head

PLANTED = HeadId(0, 2)
MARK_TRUE, MARK_FALSE = 10, 11


def _planted_model():
    """A tiny Llama (MHA) in which only head L0H2 has a value path, reading one embedding axis that
    only the two marker tokens use (+ for the 'true' marker, - for the 'false' one)."""
    lm = tiny_model("llama-mha", seed=1)
    g = lm.geometry
    with torch.no_grad():
        emb = lm.adapter.embedding().weight
        emb[:, 0] = 0.0
        emb[MARK_TRUE, 0], emb[MARK_FALSE, 0] = 3.0, -3.0
        for layer in range(g.n_layers):
            lm.model.model.layers[layer].self_attn.v_proj.weight.zero_()
        lm.model.model.layers[0].self_attn.v_proj.weight[PLANTED.head * g.d_head, 0] = 1.0
    return lm


def _marker_data(n_groups: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs, labels, groups = [], [], []
    for grp in range(n_groups):
        prefix = rng.integers(20, 90, size=5).tolist()
        for label in (1, 0, 0):
            tail = rng.integers(20, 90, size=int(rng.integers(1, 4))).tolist()
            seqs.append([*prefix, MARK_TRUE if label else MARK_FALSE, *tail])
            labels.append(label)
            groups.append(grp)
    return seqs, labels, groups


def test_planted_head_ranks_first_and_its_direction_reads_the_label() -> None:
    lm = _planted_model()
    seqs, labels, groups = _marker_data()
    fit = fit_steering(lm, seqs, labels, groups, val_frac=0.25, seed=0)
    assert fit.order[0] == PLANTED
    assert float(fit.acc[PLANTED.layer, PLANTED.head]) == 1.0
    others = fit.acc.clone()
    others[PLANTED.layer, PLANTED.head] = 0
    assert float(others.max()) <= fit.chance + 1e-9  # z == 0 there: no probe beats the majority label
    assert float(fit.theta[PLANTED.layer, PLANTED.head, 0]) > 0.99  # along the planted axis, true side positive
    assert float(fit.sigma[PLANTED.layer, PLANTED.head]) > 0


def test_probe_split_refuses_one_label_only() -> None:
    z = torch.randn(12, 1, 1, 2)
    with pytest.raises(InputError, match="one label"):
        probe_accuracy(z, [0] * 12, [i // 3 for i in range(12)])


# --------------------------------------------------------------------------- exact checks


def test_alpha_zero_reproduces_logits_bit_for_bit() -> None:
    lm = tiny_model("llama-gqa")
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(0))
    heads = (HeadId(0, 1), HeadId(2, 3))
    vec = torch.randn(2, lm.geometry.d_head)
    with torch.no_grad():
        plain = lm.forward(ids)
        with intervening(lm, [Steer(heads=heads, vector=vec, alpha=0.0)]):
            zero = lm.forward(ids)
        with intervening(lm, [Steer(heads=heads, vector=vec, alpha=1.0)]):
            moved = lm.forward(ids)
    assert torch.equal(plain, zero)
    assert not torch.equal(plain, moved)
    seqs = ids.tolist()
    base = answer_logprobs(lm, seqs, [5, 6, 7])
    assert np.array_equal(base, answer_logprobs(lm, seqs, [5, 6, 7], heads, vec, alpha=0.0))


@pytest.mark.parametrize("mode,first", [("generated", -1), ("answer", 0), ("all", None)])
def test_steer_touches_only_chosen_heads_and_positions(mode, first) -> None:
    lm = tiny_model("llama-mha")
    g = lm.geometry
    heads = [HeadId(1, 0), HeadId(1, 3)]
    shift = torch.randn(2, g.d_head, generator=torch.Generator().manual_seed(1))
    seqs = [list(range(20, 30)), list(range(40, 47))]
    plens = [6, 4]
    ids = torch.tensor([seqs[0], seqs[1] + [0, 0, 0]])
    mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    seen: list[torch.Tensor] = []

    def run():  # o_proj's input of layer 1, recorded by a hook registered after any steer's hook
        rec = lm.adapter.out_proj(1).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        try:
            with torch.no_grad():
                return lm.forward(ids, mask)
        finally:
            rec.remove()

    plain = run()
    pos = steer_positions(mode, plens, ids.shape[1])
    with intervening(lm, [Steer(heads=tuple(heads), vector=shift, alpha=2.5, positions=pos)]):
        moved = run()
    diff = (seen[1] - seen[0]).unflatten(-1, (g.n_heads, g.d_head))
    for row, p in enumerate(plens):
        start = 0 if first is None else p + first
        for t in range(ids.shape[1]):
            for h in range(g.n_heads):
                d = diff[row, t, h]
                if h in (0, 3) and t >= start:
                    assert torch.allclose(d, 2.5 * shift[(0, 3).index(h)], atol=1e-6)
                else:
                    assert torch.equal(d, torch.zeros_like(d))
        if start > 0:  # earlier positions' logits are untouched, bit for bit
            assert torch.equal(plain[row, :start], moved[row, :start])


def test_steer_positions_refuses_unknown_mode() -> None:
    with pytest.raises(InputError, match="positions"):
        steer_positions("prompt", [3], 5)
    with pytest.raises(InputError, match="alphas"):
        SteerConfig(alphas=(0.0,))
    with pytest.raises(InputError, match="ks"):
        SteerConfig(ks=(0,))


# --------------------------------------------------------------------------- artifact + generate


def _steer_artifact(lm, mode: str) -> HeadArtifact:
    heads = (HeadId(1, 0), HeadId(2, 1))
    shift = torch.randn(2, lm.geometry.d_head, generator=torch.Generator().manual_seed(3))
    return HeadArtifact(kind="steer", model=lm.name, geometry=geometry_of(lm.geometry), heads=heads,
                        params={"alpha": 8.0, "positions": mode, "K": 2}, tensors={"shift": shift})


def _generate(lm, ids):
    with torch.no_grad():
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, out.scores


def test_artifact_round_trip_applies_during_generate(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    ids = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    _plain_seq, plain_scores = _generate(lm, ids)
    for mode in ("generated", "answer", "all"):
        _steer_artifact(lm, mode).save(tmp_path / mode)
        art = HeadArtifact.load(tmp_path / f"{mode}.json", kind="steer")
        with applied(lm, art):
            seq, scores = _generate(lm, ids)
        if mode == "generated":  # the engine's own Steer at position -1 of every forward gives the same tokens
            iv = Steer(heads=art.heads, vector=art.tensors["shift"], alpha=8.0, positions=(-1,))
            with intervening(lm, [iv]):
                ref_seq, ref_scores = _generate(lm, ids)
            assert torch.equal(seq, ref_seq) and torch.equal(scores[0], ref_scores[0])
        if mode == "answer":  # the prompt's forward is not shifted: the first step's scores are the plain ones
            assert torch.equal(scores[0], plain_scores[0])
        else:
            assert not torch.equal(scores[0], plain_scores[0])
        assert not all(torch.equal(a, b) for a, b in zip(scores, plain_scores, strict=True))
    _, after = _generate(lm, ids)  # hooks removed on exit
    assert all(torch.equal(a, b) for a, b in zip(after, plain_scores, strict=True))


# --------------------------------------------------------------------------- CLI on a tiny model with a real tokenizer


def _word_model():
    """A tiny random Llama with a word-level tokenizer trained on the corpus and the facts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from headmine.core.provenance import ModelProvenance
    from headmine.models.families import adapter_for
    from headmine.models.loading import LoadedModel
    from headmine.tasks.corpus import corpus_text

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator([corpus_text()] + [s.text for s in load_statements()],
                           trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[BOS]"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=8, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    prov = ModelProvenance(name="tiny-words", source="in-process", source_kind="random", model_type="llama")
    return LoadedModel(name="tiny-words", model=model, tokenizer=tok, adapter=adapter_for(model), provenance=prov)


@pytest.fixture(scope="module")
def words():
    return _word_model()


def _cli(monkeypatch, lm):
    from headmine.cli import steer as steer_cli

    monkeypatch.setattr(steer_cli, "load_with_status", lambda *a, **k: lm)
    app = typer.Typer()
    steer_cli.register(app)
    app.command(name="noop")(lambda: None)
    return app


def test_cli_runs_saves_and_writes_the_atlas(monkeypatch, tmp_path, words) -> None:
    app = _cli(monkeypatch, words)
    db, stem = tmp_path / "a.db", tmp_path / "iti"
    res = CliRunner().invoke(app, ["steer", "tiny", "--questions", "16", "--ks", "2,4", "--alphas", "1,3",
                                   "--random", "2", "--atlas", str(db), "--save", str(stem)])
    assert res.exit_code == 0, res.output
    assert "held-out truthful choice" in res.output and "top heads against random heads" in res.output
    art = HeadArtifact.load(stem, kind="steer")
    assert art.params["K"] in (2, 4) and art.params["alpha"] in (1.0, 3.0) and len(art.heads) == art.params["K"]
    assert art.tensors["shift"].shape == (art.params["K"], 8)
    with Atlas.open(db, create=False) as at:
        runs = at.runs(kind="steer")
    assert len(runs) == 1 and runs.iloc[0]["model"] == "tiny-words"


def test_run_steer_choice_respects_the_cap_and_uses_fit_only(words) -> None:
    run = run_steer(words, SteerConfig(n_questions=16, ks=(2, 4), alphas=(1.0, 3.0), n_random=2, max_cost=1e9))
    r = run.result
    sel = r.selection[1:]
    best = max(sel, key=lambda x: (x["fit_mc1"], x["fit_mc2"], -x["cost"]))
    assert (r.chosen["K"], r.chosen["alpha"]) == (best["k"], best["alpha"])
    assert r.data["fit_questions"] + r.data["heldout_questions"] == 16
    mc1 = r.tables["held-out truthful choice (MC1, MC2) before/after"]
    assert mc1[0]["n"] == r.data["heldout_questions"]
    assert Counter(row["metric"] for row in mc1) == {"MC1": 4, "MC2": 4}
    assert all(x["fit_mc1"] is not None for x in sel)  # every configuration is within the (huge) cap
    # a cap no configuration meets: the cheapest is reported, and a note says so
    capped = run_steer(words, SteerConfig(n_questions=16, ks=(2,), alphas=(1.0, 3.0), n_random=1, max_cost=-0.0))
    rows = capped.result.selection[1:]
    cheapest = min(rows, key=lambda x: x["cost"])
    for x in rows:  # over the cap: not scored on the fit split (unless reported as the cheapest)
        assert (x["fit_mc1"] is not None) == (x["within_cap"] or x is cheapest)
    if cheapest["cost"] > 0:
        assert capped.result.chosen["alpha"] == cheapest["alpha"]
        assert any("cost cap" in n for n in capped.result.notes)
    else:
        assert capped.result.chosen["fit_cost"] <= 0


@pytest.mark.parametrize("args,message", [
    (["--ks", "a,b"], "not a comma-separated list"),
    (["--positions", "prompt"], "positions"),
    (["--alphas=-1"], "alphas"),
    (["--questions", "3"], "too few"),
    (["--data", "/nonexistent/facts.jsonl"], "no fact file"),
])
def test_cli_bad_input_is_one_clear_error(monkeypatch, words, args, message) -> None:
    res = CliRunner().invoke(_cli(monkeypatch, words), ["steer", "tiny", *args])
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output


def test_bad_fact_file_is_one_clear_error(tmp_path) -> None:
    p = tmp_path / "f.jsonl"
    p.write_text('{"topic": "x", "question": "What is {}?", "facts": [["a"]]}\n', encoding="utf-8")
    with pytest.raises(InputError, match="not a fact file"):
        load_statements(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="not a fact file"):
        load_statements(p)


def test_encode_keeps_the_prompt_boundary(words) -> None:
    st = load_statements()[:6]
    seqs, plens = encode(words.tokenizer, st)
    for s, ids, p in zip(st, seqs, plens, strict=True):
        assert words.tokenizer.decode(ids[p:]).replace(" ", "") == f"{s.answer}.".replace(" ", "")
        assert math.isfinite(p) and 0 < p < len(ids)


# --------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.mark.slow
def test_smollm2_truth_heads_generalise_to_held_out_questions(smollm2) -> None:
    """On 60 of the questions: the best probe beats the majority label; the top heads' mass-mean
    directions (fit split only) separate held-out true from false statements far better than the
    average head; and shifting along them (+alpha) gives the true answers more probability mass than
    the reverse shift (measured: AUROC 0.82 vs 0.59 over all heads; MC2 0.74 vs 0.68)."""
    from sklearn.metrics import roc_auc_score

    st = load_statements()
    n_q = len({s.group for s in st})
    keep = set(np.linspace(0, n_q - 1, 60).round().astype(int).tolist())
    st = [s for s in st if s.group in keep]
    seqs, plens = encode(smollm2.tokenizer, st)
    labels, groups = [s.label for s in st], [s.group for s in st]
    fit_idx, held_idx = group_split(groups, heldout_frac=0.3, seed=0)
    fit = fit_steering(smollm2, [seqs[i] for i in fit_idx], [labels[i] for i in fit_idx], [groups[i] for i in fit_idx])
    assert float(fit.acc.max()) >= fit.chance + 0.1

    z = last_token_z(smollm2, [seqs[i] for i in held_idx])
    y = np.array([labels[i] for i in held_idx])

    def auroc(h: HeadId) -> float:
        return float(roc_auc_score(y, (z[:, h.layer, h.head] * fit.theta[h.layer, h.head]).sum(-1).numpy()))

    top = float(np.mean([auroc(h) for h in fit.order[:8]]))
    everyone = float(np.mean([auroc(h) for h in smollm2.geometry.heads()]))
    assert top > 0.7 and top > everyone + 0.1

    heads = fit.order[:8]
    hs, hp, hg = [seqs[i] for i in held_idx], [plens[i] for i in held_idx], [groups[i] for i in held_idx]
    up = mc_scores(answer_logprobs(smollm2, hs, hp, heads, fit.shifts(heads), alpha=5.0), y, hg)[1]
    down = mc_scores(answer_logprobs(smollm2, hs, hp, heads, fit.shifts(heads), alpha=-5.0), y, hg)[1]
    assert up.mean() > down.mean()
