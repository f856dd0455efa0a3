"""CHG on real checkpoints: the toy induction model (known heads) and SmolLM2 through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.head_gating import CHGConfig, fit_chg, repeated_tokens_data
from headmine.core.ids import Site

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


def _pattern_scores(lm, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous-token, induction) attention scores [L, H] on repeated random tokens ``[bos] x x``."""
    g = lm.geometry
    ids, att = data.input_ids, data.attention_mask
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN})), ids, att)
    t = ids.shape[1]
    n = int(data.loss_mask[0].sum())  # length of one copy
    prev, ind = torch.zeros(g.n_layers, g.n_heads), torch.zeros(g.n_layers, g.n_heads)
    q = torch.arange(t - n, t)  # queries in the second copy
    for layer in range(g.n_layers):
        pat = rec.pattern[layer].float()  # [B, H, T, T]
        prev[layer] = pat[:, :, q, q - 1].mean((0, 2))
        ind[layer] = pat[:, :, q, q - n + 1].mean((0, 2))
    return prev, ind


def test_toy_induction_heads_are_facilitating(toy):
    """Converged fits (official lam = 0.1) on ``<bos> x x``: G- keeps exactly the strongest induction and
    previous-token heads open and closes every other head (irrelevant), the same in every seed.

    On this 8-head model the mean-normalised regulariser pushes each head 34x harder than on a 270-head
    model, so the kept heads settle at G- ~ 0.3-0.45, under the paper's 0.5 cut: the test labels with a
    0.25 threshold (a config option) and checks the ranking, not the 0.5 label.
    """
    g = toy.geometry
    data = repeated_tokens_data(g.vocab_size, n=32, length=12, seed=3, low=4, bos=toy.tokenizer.bos_token_id)
    cfg = CHGConfig.preset_for("quick", updates=(100, 100, 100), seeds=3, batch_size=8, micro_batch=64, threshold=0.25)
    res = fit_chg(toy, data, cfg)
    assert res.status == "complete"
    prev, ind = _pattern_scores(toy, data)
    f_min = res.F.min(0).values
    ind_rank = torch.argsort(ind[1], descending=True).tolist()
    prev_top = int(prev[0].argmax())
    for h in ind_rank[:2]:  # the two strongest induction heads (both ~0.99 attention on the induction offset)
        assert f_min[1, h] >= 0.2, f"induction head L1H{h}: F per seed {res.F[:, 1, h].tolist()}"
    assert f_min[0, prev_top] >= 0.2, f"previous-token head L0H{prev_top}: F per seed {res.F[:, 0, prev_top].tolist()}"
    codes = res.label_codes()
    assert (codes[:, 1, ind_rank[:2]] == 0).all() and (codes[:, 0, prev_top] == 0).all()
    closed = f_min < 0.05
    assert int(closed.sum()) >= 2
    i_mean = res.I.mean(0)
    assert float((i_mean[closed] >= 0.5).float().mean()) >= 0.5, f"most other heads irrelevant: I {i_mean[closed].tolist()}"
    assert bool((codes[:, closed] != 0).all()), "no closed head is labelled facilitating"
    assert float(res.F[:, ~closed].min()) > float(res.F[:, closed].max()) + 0.1  # a clean gap, every seed


def test_cli_gate_and_errors(smollm2, tmp_path, monkeypatch):
    from headmine.cli import common
    from headmine.cli.main import app

    monkeypatch.setattr(common, "load_with_status", lambda name, **kw: smollm2)
    import headmine.cli.gating as cli_gating

    monkeypatch.setattr(cli_gating, "load_with_status", lambda name, **kw: smollm2)
    runner = CliRunner()
    rows = [{"prompt": f"The plural of {w} is", "target": f" {w}s"} for w in ("cat", "dog", "tree", "car", "book", "bird")]
    data = tmp_path / "plural.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    db = tmp_path / "atlas.db"
    res = runner.invoke(app, ["gate", "smollm2", "--data", str(data), "--updates", "2", "--seeds", "2",
                              "--batch-size", "3", "--no-ablation", "--atlas", str(db)])
    assert res.exit_code == 0, res.output
    assert "facilitating" in res.output and "wrote run" in res.output
    from headmine.atlas import Atlas

    with Atlas.open(db, readonly=True) as atlas:
        runs = atlas.runs()
        assert list(runs["kind"]) == ["chg"]
        run_id = int(runs["id"].iloc[0])
        assert atlas.artifact(run_id, "G_minus").shape == (2, 30, 9)

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    res = runner.invoke(app, ["gate", "smollm2", "--data", str(empty), "--atlas", str(db)])
    assert res.exit_code == 2 and "empty" in res.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "The plural of cat is", "target": ""}) + "\n")
    res = runner.invoke(app, ["gate", "smollm2", "--data", str(bad), "--atlas", str(db)])
    assert res.exit_code == 2 and "target" in res.output

    long = tmp_path / "long.txt"
    long.write_text("word " * 9000)
    res = runner.invoke(app, ["gate", "smollm2", "--data", str(long), "--atlas", str(db)])
    assert res.exit_code == 2 and "max_length" in res.output

    f = tmp_path / "forget.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    res = runner.invoke(app, ["gate-contrast", "smollm2", "--retain", str(data), "--forget", str(f), "--atlas", str(db)])
    assert res.exit_code == 2 and "6 rows" in res.output and "4" in res.output

    with Atlas.open(db, readonly=True) as atlas:
        assert len(atlas.runs()) == 1  # failed commands wrote nothing
