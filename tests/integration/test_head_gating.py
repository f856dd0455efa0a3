"""CHG on real checkpoints: the toy induction model (known heads) and SmolLM2 through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.head_gating import (
    CHGConfig,
    GatingData,
    fit_chg,
    mean_logprob,
    repeated_tokens_data,
    targeted_ablation,
    task_data,
)
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


#: the toy's ground truth (its README, recomputed by ``_pattern_scores``): previous-token heads in layer 0,
#: induction heads in layer 1.
PREV_TOKEN, INDUCTION = ((0, 0), (0, 3)), ((1, 0), (1, 2))
#: a full-batch fit (32 rows, every update sees all of them): deterministic gradients, so Adam's per-head steps
#: follow the sign of data gradient + regulariser and the stages settle (converged verdict) in ~100 updates.
TOY_FIT = dict(updates=(30, 100, 100), lrs=((0.5, 0.05), (1.0, 0.1), (1.0, 0.1)), batch_size=32, micro_batch=96,
               seeds=3, eval_rows=32)


@pytest.fixture(scope="module")
def toy_data(toy):
    return repeated_tokens_data(toy.geometry.vocab_size, n=32, length=12, seed=3, low=4, bos=toy.tokenizer.bos_token_id)


@pytest.fixture(scope="module")
def single_costs(toy, toy_data) -> torch.Tensor:
    """[L, H]: nats of target log-prob lost when one head alone is gated to 0 (all others open)."""
    g = toy.geometry
    base = float(mean_logprob(toy, toy_data))
    out = torch.zeros(g.n_layers, g.n_heads)
    for layer in range(g.n_layers):
        for head in range(g.n_heads):
            gates = torch.ones(g.n_layers, g.n_heads)
            gates[layer, head] = 0
            out[layer, head] = base - float(mean_logprob(toy, toy_data, gates))
    return out


def test_toy_ground_truth(toy, toy_data, single_costs):
    """The known heads are what the README says on this data, and what they cost alone: L0H3, the second
    previous-token head, is redundant with L0H0 (< 0.1 nats alone), and L0H2 (no previous-token or
    induction pattern) is the most necessary layer-0 head."""
    prev, ind = _pattern_scores(toy, toy_data)
    assert {(0, int(h)) for h in torch.argsort(prev[0], descending=True)[:2]} == set(PREV_TOKEN)
    assert {(1, int(h)) for h in torch.argsort(ind[1], descending=True)[:2]} == set(INDUCTION)
    costly = {(int(a), int(b)) for a, b in (single_costs >= 0.1).nonzero()}
    assert costly == {(0, 0), (0, 2), (1, 0), (1, 2)}, single_costs
    assert float(single_costs[0, 3]) < 0.1


def test_toy_converged_fit_ranks_the_known_heads(toy, toy_data, single_costs):
    """Official lam = 0.1 (mean over the 8 heads): the fit converges, and in every seed the previous-token
    and induction heads (and L0H2) have the highest F, the three heads that cost < 0.1 nats alone and are
    neither (L0H1, L1H1, L1H3) have F < 0.05. At the paper's 0.5 cut no head is facilitating: on 8 heads
    the regulariser pushes each gate 0.1 / 8 = 0.0125 per logit (34x the push on SmolLM2's 270 heads), so
    G- settles where the log-prob starts to fall, F 0.3-0.45 (it is converged, not short of updates)."""
    res = fit_chg(toy, toy_data, CHGConfig.preset_for("paper", **TOY_FIT))
    assert res.converged, res.convergence.reasons
    known = [*PREV_TOKEN, *INDUCTION, (0, 2)]
    others = [(0, 1), (1, 1), (1, 3)]
    for k in range(3):
        f = res.F[k]
        assert min(float(f[h]) for h in known) > 0.2, f"seed {k}: F {f.tolist()}"
        assert max(float(f[h]) for h in others) < 0.05, f"seed {k}: F {f.tolist()}"
    assert float(res.F.max()) < 0.5
    assert not (res.label_codes() == 0).any()


def test_toy_labels_at_half_with_the_per_head_push_of_smollm2(toy, toy_data, single_costs):
    """lam scaled so each head gets SmolLM2's per-head push (0.1 * 8 / 270): the converged fit labels the
    previous-token and induction heads (and L0H2) facilitating at 0.5 in every seed. It also keeps L0H1 (a
    weak previous-token head, 0.01 nats alone) open: CHG judges heads jointly, so a head that is redundant
    alone can still be facilitating; a head with no effect (L1H1) never is."""
    res = fit_chg(toy, toy_data, CHGConfig.preset_for("paper", **{**TOY_FIT, "lam": 0.1 * 8 / 270}))
    assert res.converged, res.convergence.reasons
    codes = res.label_codes()
    for layer, head in (*PREV_TOKEN, *INDUCTION, (0, 2)):
        assert (codes[:, layer, head] == 0).all(), f"L{layer}H{head}: F {res.F[:, layer, head].tolist()}"
    assert not (codes[:, 1, 1] == 0).any()
    assert abs(float(single_costs[1, 1])) < 0.01


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


#: a small real-model fit on SmolLM2 IOI: full batch on 8 prompts, 2 seeds, 15 + 25 + 25 updates (~2.5
#: CPU-minutes); the claims are checked on 32 other prompts. Its verdict is NOT converged: the stages settle
#: (relative change 0.011-0.018 against the 0.01 tolerance) but the two seeds disagree (F r = 0.19, labels
#: 46%); no CPU configuration studied so far converges on SmolLM2 IOI (bench/results/chg_convergence.md), so
#: these tests check the paper's claims per seed on the gates a CPU budget gives.
SMOL_FIT = dict(updates=(15, 25, 25), lrs=((0.5, 0.05), (1.0, 0.1), (1.0, 0.1)), batch_size=8, micro_batch=16,
                seeds=2, eval_rows=8)
#: nats; measured gaps F - I at k = 16, eager kernel: -2.99 (seed 0), -1.46 (seed 1), mean -2.22; SDPA kernel
#: (the default): -3.64 (seed 0), +1.05 (seed 1), mean -1.29. Seed 1 flips with a 1e-7 change of the
#: kernel: on an unconverged fit one seed's ordering is noise, so the claim is checked on the seed mean.
#: Ablating the heads labelled facilitating costs 1.38 against 0.006 for as many heads labelled irrelevant
MARGIN_F_VS_I = 1.0
MARGIN_LABELS = 0.5
MAX_IRRELEVANT_COST = 0.1


def _rows(data: GatingData, start: int, stop: int) -> GatingData:
    return GatingData(input_ids=data.input_ids[start:stop], attention_mask=data.attention_mask[start:stop],
                      loss_mask=data.loss_mask[start:stop], source=data.source)


@pytest.fixture(scope="module")
def smol_ioi(smollm2):
    """(converged CHG fit on 8 IOI prompts, 32 held-out IOI prompts)."""
    data, _ = task_data(smollm2, "ioi", n=40, seed=0)
    res = fit_chg(smollm2, _rows(data, 0, 8), CHGConfig.preset_for("paper", **SMOL_FIT))
    return res, _rows(data, 8, 40)


def test_smollm2_ioi_f_order_beats_i_order(smollm2, smol_ioi):
    """Paper Fig. 2 on held-out IOI prompts: from G+, closing the top-16 heads by F lowers the answer
    log-prob (vs opening them) by more than closing the top-16 by I, on the mean over seeds, by a margin
    (per seed the ordering of this unconverged fit depends on the attention kernel: see the gaps above)."""
    res, held = smol_ioi
    assert res.status == "complete" and res.convergence is not None
    gaps, f_effects = [], []
    for k in range(res.G.shape[0]):
        out = targeted_ablation(smollm2, held, res.G_plus[k], {"F": res.F[k], "I": res.I[k]}, (16,), micro_batch=16)
        gaps.append(float(out["F"][0] - out["I"][0]))
        f_effects.append(float(out["F"][0]))
    assert sum(gaps) / len(gaps) < -MARGIN_F_VS_I, gaps
    assert min(f_effects) < -3 * MARGIN_F_VS_I, f_effects  # one seed finds heads that matter a lot


def test_smollm2_ioi_labels_at_half(smollm2, smol_ioi):
    """Labels at the paper's 0.5 threshold on the real model: ablating the heads labelled facilitating in
    every seed costs the held-out answer more than ablating as many heads labelled irrelevant in every
    seed (highest score first), and the irrelevant ones cost little."""
    res, held = smol_ioi
    assert res.config.threshold == 0.5
    codes = res.label_codes()
    fac, irr = (codes == 0).all(0), (codes == 2).all(0)
    k = int(min(fac.sum(), irr.sum()))
    assert k >= 3, f"{int(fac.sum())} facilitating, {int(irr.sum())} irrelevant in every seed"
    base = float(mean_logprob(smollm2, held))
    cost = {}
    for name, mask, score in (("F", fac, res.F.mean(0)), ("I", irr, res.I.mean(0))):
        idx = mask.flatten().nonzero().flatten()
        top = idx[torch.argsort(score.flatten()[idx], descending=True)[:k]]
        gates = torch.ones(mask.numel())
        gates[top] = 0
        cost[name] = base - float(mean_logprob(smollm2, held, gates.view_as(mask), micro_batch=16))
    assert cost["F"] > cost["I"] + MARGIN_LABELS, cost
    assert cost["I"] < MAX_IRRELEVANT_COST, cost
