"""``headmine prune``: the saved pruned model loads in plain transformers with the logits of the in-memory
zero ablation, the orders sort as documented, a head planted as irrelevant (its o_proj columns zeroed)
is what CHG removes first, the artifact applies during generate, the CLI runs, and bad input is refused."""

from __future__ import annotations

import pytest
import torch
import typer
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from headmine.apply import HeadArtifact, applied
from headmine.apply.prune import (
    PruneConfig,
    attribution_order,
    head_counts,
    irrelevance_order,
    run_prune,
    save_pruned,
)
from headmine.causal import Zero, intervening
from headmine.cli import prune as prune_cli
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from tests.tiny_models import tiny_model

H = HeadId


def test_saved_pruned_model_equals_the_zero_intervention(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    heads = (H(0, 1), H(2, 0), H(2, 3))
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    save_pruned(lm, heads, tmp_path / "pruned")
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())  # restored in memory
    assert (tmp_path / "pruned" / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", attn_implementation="eager").eval()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
        with intervening(lm, [Zero(heads=heads)]):
            want = lm.model(input_ids=ids).logits
        plain = lm.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-6)
    assert (got - plain).abs().max() > 1e-3
    with pytest.raises(InputError, match="does not exist"):
        save_pruned(lm, heads, tmp_path / "no" / "dir")


def test_orders_and_counts() -> None:
    i = torch.tensor([[0.1, 0.9], [0.9, 0.0]])
    assert irrelevance_order(i) == [H(0, 1), H(1, 0), H(0, 0), H(1, 1)]  # ties: lower layer first
    e = torch.tensor([[-2.0, 0.5], [0.1, -0.3]])
    assert attribution_order(e) == [H(1, 0), H(1, 1), H(0, 1), H(0, 0)]
    assert head_counts((0.1, 0.5, 3), 40) == [0, 3, 4, 20]
    with pytest.raises(InputError, match="cannot remove"):
        head_counts((50,), 40)


@pytest.fixture(scope="module")
def planted():
    """The toy with induction head L1H0 silenced by construction (its o_proj columns zeroed), pruned."""
    from headmine.models.loading import load_model

    toy = load_model("toy-induction")
    d = toy.geometry.d_head
    with torch.no_grad():
        toy.adapter.out_proj(1).weight[:, 0:d] = 0.0
    run = run_prune(toy, PruneConfig(task="induction", n=24, ks=(1, 2, 4), chg_preset="quick", n_random=2, corpus_n=0))
    return toy, run


def test_planted_irrelevant_head_is_removed_first(planted) -> None:
    """L1H0 writes nothing, so CHG's gate on it has no data gradient: the regulariser alone drives
    G+ up and G- down, I = G+ (1 - G-) near 1. It is removed among the first two (ties with the toy's own
    irrelevant L1H1), while L1H2, now the only induction head, stays in the second half."""
    _toy, run = planted
    order = run.orders["chg_irrelevance"]
    assert H(1, 0) in order[:2], order
    assert order.index(H(1, 2)) >= 4, order
    assert float(run.artifact.tensors["chg_I"][1, 0]) > 0.8
    rows = {r["condition"]: r for r in run.result.tables["held-out top-1 accuracy vs heads removed"]}
    assert rows["chg_irrelevance, k=1"]["delta"] == 0.0  # removing a silent head changes nothing
    assert rows["chg_irrelevance, k=0"]["value"] == rows["attribution, k=0"]["value"]
    assert run.result.chosen["k"] >= 1 and H(1, 0) in run.artifact.heads
    note = run.result.notes[0]
    assert note.startswith("the CHG fit") and (("did NOT converge" in note) != run.converged)
    assert run.result.chosen["chg_converged"] == run.converged
    assert "no corpus loss" not in " ".join(run.result.notes)  # corpus_n=0 skips it quietly


def test_artifact_round_trip_applies_during_generate(planted, tmp_path) -> None:
    toy, run = planted
    run.artifact.save(tmp_path / "p")
    back = HeadArtifact.load(tmp_path / "p", kind="prune")
    assert back.heads == run.artifact.heads and back.info["order"][0] == "L1H0"
    heads = (H(0, 1), H(1, 3))
    art = HeadArtifact(kind="prune", model=toy.name, geometry=back.geometry, heads=heads)
    ids = torch.tensor([[toy.tokenizer.bos_token_id, 5, 9, 14, 22, 5, 9]])
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        with applied(toy, art):
            a = toy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        with intervening(toy, [Zero(heads=heads)]):
            b = toy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert torch.equal(torch.stack(a.scores), torch.stack(b.scores))


def test_cli_runs_and_refuses_bad_input(tmp_path) -> None:
    app = typer.Typer()
    prune_cli.register(app)

    @app.command()
    def other() -> None:
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["prune", "toy-induction", "--task", "induction", "--n", "12", "--ks", "1,2",
                              "--random-draws", "1", "--corpus-windows", "0", "--atlas", str(tmp_path / "a.db"),
                              "--save", str(tmp_path / "p"), "--save-model", str(tmp_path / "m")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "top-1 accuracy vs heads removed" in res.output and "CHG fit" in res.output
    assert (tmp_path / "p.json").is_file() and (tmp_path / "a.db").is_file()
    assert (tmp_path / "m" / "config.json").is_file()
    bad = runner.invoke(app, ["prune", "toy-induction", "--ks", "abc"])
    assert bad.exit_code != 0 and "--ks" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["prune", "toy-induction", "--task", "nosuchtask"])
    assert bad.exit_code != 0 and "nosuchtask" in bad.output and "Traceback" not in bad.output
    with pytest.raises(InputError, match="too few"):
        PruneConfig(n=2)


@pytest.mark.slow
def test_smollm2_prune_reports_the_unconverged_fit(smollm2) -> None:
    """IOI on SmolLM2 with a short CHG fit: the model does IOI on held-out templates (logit difference > 0),
    removing 0 heads changes nothing, the unconverged verdict reaches the notes and the chosen parameters,
    and removing 10% of the heads at random raises the corpus loss. (Whether the unconverged I order
    beats random is what the measurement reports, not what a test can promise: in one short fit it did not.)"""
    run = run_prune(smollm2, PruneConfig(n=12, ks=(0.1,), chg_rows=4, chg_overrides=dict(updates=(4, 4, 4)),
                                         n_random=1, corpus_n=2, corpus_len=32))
    rows = {r["condition"]: r for r in run.result.tables["held-out logit_diff vs heads removed"]}
    assert rows["chg_irrelevance, k=0"]["value"] > 0 and rows["chg_irrelevance, k=0"]["delta"] == 0.0
    assert not run.converged and "did NOT converge" in run.result.notes[0]
    assert run.result.chosen["chg_verdict"] == "not converged" and not run.artifact.info["chg_converged"]
    corpus = {r["condition"]: r for r in run.result.tables["corpus loss vs heads removed"]}
    assert corpus["random, k=27"]["delta"] > 0 and len(corpus) == 6
