"""Function vectors (headmine.apply.fv, fv_run, cli.fv): exact checks of the indirect-effect sweep, the
vector and its addition, a planted head, the artifact applied during generate, the CLI and bad input."""

from __future__ import annotations

import pytest
import torch
import typer
from transformers import AutoModelForCausalLM, LlamaConfig
from typer.testing import CliRunner

import headmine.cli.fv as cli_fv
from headmine.apply import HeadArtifact, applied, generate_texts
from headmine.apply.fv import (
    FUNCTION_VECTORS,
    adding_vector,
    average_indirect_effect,
    function_vector,
    head_cie,
    last_z,
    top_heads,
)
from headmine.apply.fv_run import TASKS, FVConfig, build_task, icl_prompt, read_pairs, run_fv, task_pairs
from headmine.atlas import Atlas
from headmine.causal import Mean, intervening
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.core.provenance import ModelProvenance
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from tests.tiny_models import VOCAB, tiny_model


def _ids(n: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(4, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-mqa"])  # gemma3-mqa: sliding-window layers in the cache
def test_cie_of_own_activation_is_zero_and_matches_full_forward(family: str) -> None:
    """Patching each head with its own activation changes nothing; patching another prompt's mean equals a
    full forward pass under the engine's Mean intervention at the last position (the KV-cache shortcut is exact)."""
    lm = tiny_model(family)
    ids = _ids(4, 10, 0)
    z, _ = last_z(lm, ids)
    own = head_cie(lm, ids[0], 7, z[0])
    assert own.abs().max() < 1e-6
    mean = z[1:].mean(0)
    cie = head_cie(lm, ids[0], 7, mean, max_rows=3)  # several chunks
    assert cie.abs().max() > 1e-4  # the check above could fail
    with torch.no_grad():
        base = torch.softmax(lm.model(input_ids=ids[:1]).logits[0, -1], -1)[7]
        for h in (HeadId(0, 1), HeadId(1, 3), HeadId(2, 0)):
            with intervening(lm, [Mean(heads=(h,), values={h.layer: mean[h.layer]}, positions=(-1,))]):
                p = torch.softmax(lm.model(input_ids=ids[:1]).logits[0, -1], -1)[7]
            assert float(cie[h.layer, h.head]) == pytest.approx(float(p - base), abs=1e-6)
    only = head_cie(lm, ids[0], 7, mean, heads=[HeadId(1, 2)])
    assert torch.isnan(only).sum() == only.numel() - 1 and float(only[1, 2]) == pytest.approx(float(cie[1, 2]), abs=1e-6)


def test_function_vector_is_sum_of_weight_slices_without_bias() -> None:
    """v = sum of W_O slice . mean z; a family whose output projection has a bias (GPT-2) does not add it."""
    for name in ("llama-gqa", "gpt2-mha"):
        lm = tiny_model(name)
        g = lm.geometry
        mean = torch.randn(g.n_layers, g.n_heads, g.d_head, generator=torch.Generator().manual_seed(1))
        heads = [HeadId(0, 1), HeadId(2, 3), HeadId(1, 0)]
        want = torch.zeros(g.d_model)
        for h in heads:
            proj = lm.adapter.out_proj(h.layer)
            z = torch.zeros(1, g.n_heads * g.d_head)
            z[0, h.head * g.d_head:(h.head + 1) * g.d_head] = mean[h.layer, h.head]
            want += (proj(z) - proj(torch.zeros_like(z)))[0]  # the module's own product, bias removed
        assert torch.allclose(function_vector(lm, mean, heads), want, atol=1e-5)


def test_adding_vector_zero_is_identity_and_last_touches_only_last() -> None:
    lm = tiny_model("llama-gqa")
    g = lm.geometry
    ids = _ids(2, 8, 2)
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        with adding_vector(lm, 1, torch.zeros(g.d_model)):
            same = lm.model(input_ids=ids).logits
        with adding_vector(lm, 1, torch.randn(g.d_model) * 5):
            last = lm.model(input_ids=ids).logits
        with adding_vector(lm, 1, torch.randn(g.d_model) * 5, positions="all"):
            every = lm.model(input_ids=ids).logits
    assert torch.equal(plain, same)
    assert torch.equal(plain[:, :-1], last[:, :-1]) and (plain[:, -1] - last[:, -1]).abs().max() > 1e-3
    assert (plain[:, 0] - every[:, 0]).abs().max() > 1e-3


def test_planted_head_has_the_top_aie() -> None:
    """One head's output projection is rewritten so that moving its z towards the clean mean writes the
    target token's unembedding direction: it must come out first by AIE, far ahead of the rest."""
    lm = tiny_model("llama-mha", seed=3)
    g = lm.geometry
    planted, target = HeadId(1, 2), 11
    clean, corrupted = _ids(12, 10, 4), _ids(6, 10, 5)
    mean = last_z(lm, clean)[0].mean(0)
    delta = mean[planted.layer, planted.head] - last_z(lm, corrupted)[0][:, planted.layer, planted.head].mean(0)
    with torch.no_grad():
        lm.adapter.unembedding().weight[target] *= 50  # a readable target logit at this tiny init scale
    w_t = lm.adapter.W_U()[:, target]
    before = average_indirect_effect(lm, list(corrupted), [target] * 6, mean)
    with torch.no_grad():
        w = lm.adapter.out_proj(planted.layer).weight
        cols = slice(planted.head * g.d_head, (planted.head + 1) * g.d_head)
        w[:, cols] = torch.outer(w_t / w_t.norm(), delta / delta.norm()) * (40.0 / delta.norm())
    aie = average_indirect_effect(lm, list(corrupted), [target] * 6, mean)
    assert top_heads(before, 1) != [planted]  # not top by chance before the edit
    assert top_heads(aie, 1) == [planted]
    rest = aie.clone()
    rest[planted.layer, planted.head] = float("-inf")
    assert float(aie[planted.layer, planted.head]) > 0.2 and float(aie[planted.layer, planted.head]) > 5 * float(rest.max())


def test_artifact_round_trip_applies_during_generate(smollm2, tmp_path) -> None:
    """Saved, loaded and applied: KV-cached generate under applied() gives, step by step, the logits of a
    full forward pass over the generated sequence with the vector added at every position from the prompt's
    last one on (the "last position of each call" rule = the generated positions)."""
    lm = _tiny_with_tokenizer(smollm2.tokenizer)
    g = lm.geometry
    vec = torch.randn(g.d_model, generator=torch.Generator().manual_seed(0)) * 4
    art = HeadArtifact(kind="fv", model=lm.name, geometry={k: getattr(g, k) for k in ("n_layers", "n_heads", "n_kv_heads",
                       "d_head", "d_model")}, heads=(HeadId(0, 1),), params={"layer": 0, "task": "t", "positions": "last",
                       "scale": 1.0}, tensors={"fv.t": vec})
    art.save(tmp_path / "fv")
    back = HeadArtifact.load(tmp_path / "fv", kind="fv")
    assert torch.equal(FUNCTION_VECTORS.vector(back), vec)
    ids = smollm2.tokenizer(["Q: hot\nA: cold\n\nQ: big\nA:"], return_tensors="pt")["input_ids"]
    start = ids.shape[1] - 1
    kw = dict(max_new_tokens=5, do_sample=False, use_cache=True, return_dict_in_generate=True, output_logits=True,
              pad_token_id=0)
    with torch.no_grad():
        plain = lm.model.generate(input_ids=ids, **kw)
        with applied(lm, back):
            out = lm.model.generate(input_ids=ids, **kw)
    steps = torch.stack(out.logits, 1)[0]  # [new, V]
    assert not torch.allclose(steps, torch.stack(plain.logits, 1)[0], atol=1e-3)

    def add_from_start(module, args, output):
        h = (output[0] if isinstance(output, tuple) else output).clone()
        h[:, start:] += vec
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = lm.adapter.layer(0).register_forward_hook(add_from_start)
    try:
        with torch.no_grad():
            full = lm.model(input_ids=out.sequences[:, :-1]).logits[0, start:]
    finally:
        handle.remove()
    assert torch.allclose(steps, full, atol=1e-4)


def test_data_tables_prompts_and_split(smollm2) -> None:
    for task in TASKS:
        pairs = task_pairs(task)
        assert len(pairs) >= 30 and len({x for x, _ in pairs}) == len(pairs)
    assert len(task_pairs("antonym")) >= 150 and ("hot", "cold") in task_pairs("antonym")
    assert icl_prompt([("a", "b")], "c") == "Q: a\nA: b\n\nQ: c\nA:"
    run = build_task(smollm2, "country_capital", FVConfig(n_fit=5, n_eval=5, shots=4))
    fit_x = {x for x, _ in run.fit_q}
    assert not fit_x & {x for x, _ in run.held_q}
    assert run.info["single_token"] < run.info["pairs"]  # multi-token capitals are dropped
    for p, (x, _) in zip(run.held_prompts, run.held_q, strict=True):  # demonstrations are fit pairs only
        demos = [line[3:] for line in p.split("\n") if line.startswith("Q: ")][:-1]
        assert len(demos) == 4 and x not in demos and not set(demos) & {x for x, _ in run.held_q}


def _tiny_with_tokenizer(tok) -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    prov = ModelProvenance(name="tiny-smol", source="in-process", source_kind="random", model_type="llama")
    return LoadedModel(name="tiny-smol", model=model, tokenizer=tok, adapter=adapter_for(model), provenance=prov)


def test_cli_weak_model_and_bad_input(smollm2, tmp_path, monkeypatch) -> None:
    """A random model cannot do the tasks in context: the run says so and fits nothing; bad options fail cleanly."""
    lm = _tiny_with_tokenizer(smollm2.tokenizer)
    monkeypatch.setattr(cli_fv, "load_with_status", lambda *a, **k: lm)
    app = typer.Typer()
    cli_fv.register(app)
    res = CliRunner().invoke(app, ["tiny", "--task", "antonym", "--n-fit", "4", "--n-eval", "4", "--shots", "3",
                                   "--save", str(tmp_path / "fv"), "--atlas", str(tmp_path / "a.db")])
    assert res.exit_code == 0, res.output
    assert "too weak" in res.output and "no function vector" in res.output and "nothing to save" in res.output
    assert not (tmp_path / "fv.json").exists()
    with Atlas.open(tmp_path / "a.db") as atlas:
        assert list(atlas.runs(kind="fv")["kind"]) == ["fv"]
    for args, text in ((["tiny", "--task", "no_such_task"], "no function-vector task"),
                       (["tiny", "--shots", "0"], "shots must be at least 1")):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code != 0 and text in bad.output and "Traceback" not in bad.output


def test_bad_input(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    g = lm.geometry
    with pytest.raises(InputError, match="has shape"):
        with adding_vector(lm, 0, torch.zeros(g.d_model + 1)):
            pass
    with pytest.raises(InputError, match="unknown positions"):
        with adding_vector(lm, 0, torch.zeros(g.d_model), positions="first"):
            pass
    with pytest.raises(InputError, match="mean z has shape"):
        head_cie(lm, _ids(1, 5, 0)[0], 3, torch.zeros(2, 2, 2))
    with pytest.raises(InputError, match="cannot choose"):
        top_heads(torch.zeros(3, 4), 13)
    art = HeadArtifact(kind="fv", model="m", geometry={}, params={"layer": 0, "task": "x"}, tensors={"fv.y": torch.zeros(3)})
    with pytest.raises(InputError, match="no vector for task 'x'"):
        FUNCTION_VECTORS.vector(art)
    (tmp_path / "empty.tsv").write_text("only-one-field\n", encoding="utf-8")
    with pytest.raises(InputError, match="no 'input<TAB>output' rows"):
        read_pairs(tmp_path / "empty.tsv")
    (tmp_path / "latin.tsv").write_bytes("caf\xe9\tx\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_pairs(tmp_path / "latin.tsv")
    with pytest.raises(InputError, match="no tokenizer"):
        run_fv(lm, FVConfig())


@pytest.mark.slow
def test_smollm2_small_run_through_cli(smollm2, tmp_path, monkeypatch) -> None:
    """A small real run on SmolLM2 through the CLI: antonyms pass the ICL filter; the chosen heads have a
    positive AIE; on the fit queries the vector at the chosen layer beats zero-shot without it; the saved
    artifact applies during generate and changes the continuation."""
    monkeypatch.setattr(cli_fv, "load_with_status", lambda *a, **k: smollm2)
    app = typer.Typer()
    cli_fv.register(app)
    res = CliRunner().invoke(app, ["smollm2", "--task", "antonym", "--n-fit", "8", "--n-eval", "8", "--trials", "2",
                                   "--random-draws", "2", "--corpus-windows", "2", "--no-shuffled",
                                   "--save", str(tmp_path / "fv"), "--atlas", str(tmp_path / "a.db")])
    assert res.exit_code == 0, res.output
    art = HeadArtifact.load(tmp_path / "fv", kind="fv")
    assert len(art.heads) == 6 and art.params["task"] == "antonym"
    with Atlas.open(tmp_path / "a.db") as atlas:
        runs = atlas.runs(kind="fv")
    assert len(runs) == 1
    summary = art.info["chosen"]
    assert summary["aie_of_chosen"][0] > 0 and summary["aie_of_chosen"] == sorted(summary["aie_of_chosen"], reverse=True)
    assert summary["fit_zero_shot_top1"] > summary["fit_no_vector"]
    with applied(smollm2, art):
        edited = generate_texts(smollm2, ["Q: hot\nA:", "The word"], max_new_tokens=4)
    assert edited != generate_texts(smollm2, ["Q: hot\nA:", "The word"], max_new_tokens=4)
    assert "held-out top-1" in res.output and "FV minus random-head FV" in res.output
