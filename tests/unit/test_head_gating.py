"""Causal Head Gating on tiny random models: gradients, exactness, batching of seeds, labels, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headmine.causal import head_gating as hg
from headmine.causal.contrastive_gating import (
    INSTRUCTIONS,
    ContrastConfig,
    builtin_contrast_split,
    check_pair,
    contrast_loss_fn,
    split_pair_rows,
    token_accuracy,
    word_table,
)
from headmine.causal.engine import intervening
from headmine.causal.head_gating import (
    CHGConfig,
    fit_chg,
    gated_logprob,
    label_codes,
    mean_logprob,
    repeated_tokens_data,
    targeted_ablation,
    token_data,
)
from headmine.causal.head_gating import convergence as hg_conv
from headmine.causal.head_gating import fit as hg_fit
from headmine.causal.interventions import Gate
from headmine.core.errors import InputError
from tests.tiny_models import VOCAB, tiny_model

torch.set_num_threads(1)
TINY = CHGConfig.preset_for("quick", updates=(4, 3, 3), seeds=2, batch_size=4, micro_batch=8, eval_rows=4)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama-gqa")


@pytest.fixture(scope="module")
def data():
    return repeated_tokens_data(VOCAB, n=6, length=8, seed=1)


def _plain_logprob(lm, ids, att, lmask):
    logits = lm.model(input_ids=ids, attention_mask=att).logits.float()
    lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = lmask[:, 1:].float()
    return (lp * m).sum(1) / m.sum(1)


def test_all_ones_gates_reproduce_plain_loss_exactly(lm, data):
    ids, att, lmask = data.rows(range(len(data)))
    with torch.no_grad():
        plain = _plain_logprob(lm, ids, att, lmask)
        ungated = gated_logprob(lm, ids, att, lmask, None)[0]
        one = gated_logprob(lm, ids, att, lmask, torch.ones(3, 4))
        many = gated_logprob(lm, ids, att, lmask, torch.ones(3, 3, 4))
        with intervening(lm, [Gate(factors=torch.ones(3, 4))]):
            gated_logits = lm.model(input_ids=ids, attention_mask=att).logits
        plain_logits = lm.model(input_ids=ids, attention_mask=att).logits
    assert torch.equal(gated_logits, plain_logits)
    assert torch.equal(one[0], ungated)
    for k in range(3):
        assert torch.equal(many[k], ungated)
    assert torch.allclose(ungated, plain, atol=1e-6)  # independent reference of the masked mean NLL


def test_gradients_reach_only_gate_logits(lm, data):
    ids, att, lmask = data.rows(range(4))
    theta = torch.zeros(2, 3, 4, requires_grad=True)
    lp = gated_logprob(lm, ids, att, lmask, torch.sigmoid(theta))
    (-lp.mean()).backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())


def test_padding_and_loss_mask(lm):
    d = token_data([[5, 6, 7], [5, 6, 7, 8, 9, 10]], [[11, 12], [13]])
    assert d.input_ids.shape == (2, 7)
    assert d.loss_mask.tolist()[0] == [False] * 3 + [True] * 2 + [False] * 2
    alone = token_data([[5, 6, 7]], [[11, 12]])
    both = gated_logprob(lm, *d.rows([0, 1]), torch.ones(1, 3, 4))
    one = gated_logprob(lm, *alone.rows([0]), torch.ones(1, 3, 4))
    assert torch.allclose(both[0, 0], one[0, 0], atol=1e-5)


def test_k_seeds_in_one_pass_equal_separate_fits(lm, data):
    together = fit_chg(lm, data, TINY)
    for k in range(2):
        alone = fit_chg(lm, data, CHGConfig.preset_for("quick", **{**TINY.to_dict(), "preset": None, "seeds": 1, "seed": k}))
        for a, b in ((together.G, alone.G), (together.G_plus, alone.G_plus), (together.G_minus, alone.G_minus)):
            assert torch.allclose(a[k], b[0], atol=1e-4)
    assert together.status == "complete"
    assert together.G.shape == (2, 3, 4)
    assert set(together.curves) == {"G", "G+", "G-"}
    assert together.curves["G"]["nll"].shape == (4, 2)
    assert torch.allclose(together.I, together.G_plus * (1 - together.G_minus))


def test_regulariser_direction(lm, data):
    """G+ (lam > 0) ends above G- (lam < 0) on average: the nudge goes the documented way."""
    res = fit_chg(lm, data, CHGConfig.preset_for("quick", updates=(3, 8, 8), seeds=1, batch_size=4))
    assert float(res.G_plus.mean()) > float(res.G.mean()) > float(res.G_minus.mean())


def test_projection_keeps_logits_where_the_regulariser_acts(lm, data):
    """project=True: every stage's gate logits stay inside +-clamp (where the clamped regulariser still
    pulls), even at a learning rate that drives unprojected logits past it; the projected fit starts from
    the same gates and differs from the unprojected one only through the bound."""
    cfg = dict(updates=(6, 6, 6), lrs=((2.0, 2.0),) * 3, seeds=2, batch_size=6, micro_batch=12, eval_rows=6)
    free = fit_chg(lm, data, CHGConfig.preset_for("quick", **cfg))
    boxed = fit_chg(lm, data, CHGConfig.preset_for("quick", project=True, **cfg))
    bound = torch.sigmoid(torch.tensor(4.0))
    lo, hi = 1 - bound, bound
    free_out = [(g < lo - 1e-6) | (g > hi + 1e-6) for g in (free.G, free.G_plus, free.G_minus)]
    assert any(bool(m.any()) for m in free_out), "the unprojected fit must leave the box at this lr"
    for g in (boxed.G, boxed.G_plus, boxed.G_minus):
        assert float(g.min()) >= float(lo) - 1e-6 and float(g.max()) <= float(hi) + 1e-6
    assert boxed.convergence is not None and set(boxed.convergence.stages) == {"G", "G+", "G-"}


def test_labels():
    gp = torch.tensor([0.9, 0.1, 0.9, 0.1, 0.6])
    gm = torch.tensor([0.9, 0.1, 0.1, 0.9, 0.45])
    assert label_codes(gp, gm).tolist() == [0, 1, 2, 3, 4]
    res = hg.CHGResult(G=gp.view(1, 1, 5), G_plus=torch.stack([gp, gp]).view(2, 1, 5), G_minus=torch.stack([gm, gm]).view(2, 1, 5),
                       config=TINY)
    agg = res.aggregate()
    assert agg["F_always"].tolist() == [[True, False, False, False, False]]
    assert res.seed_agreement()["label_agreement"] == 1.0
    assert abs(sum(res.shares()[lab] for lab in hg.LABELS) - 1) < 1e-6


def test_always_share_next_to_its_chance_share():
    """Seeds that label heads independently are "always" facilitating about as often as the product of
    their shares; identical seeds are always exactly as often as one seed, far above that product."""
    gen = torch.Generator().manual_seed(0)
    k, n = 3, 4000
    gp, gm = torch.rand(k, 1, n, generator=gen), torch.rand(k, 1, n, generator=gen)
    indep = hg.CHGResult(G=gp, G_plus=gp, G_minus=gm, config=TINY).shares()
    per_seed = [float(((gp[i] >= 0.5) & (gm[i] >= 0.5)).float().mean()) for i in range(k)]
    assert abs(indep["F_always_chance"] - per_seed[0] * per_seed[1] * per_seed[2]) < 1e-9
    assert abs(indep["F_always"] - indep["F_always_chance"]) < 0.01  # ~1.6% both; independent seeds
    same = hg.CHGResult(G=gp, G_plus=gp[:1].expand(k, 1, n), G_minus=gm[:1].expand(k, 1, n), config=TINY).shares()
    assert abs(same["F_always"] - per_seed[0]) < 1e-9 and same["F_always"] > 10 * same["F_always_chance"]


def test_targeted_ablation_zero_at_k0_and_consistent(lm, data):
    """k = 0 changes no head (delta exactly 0); k = 1 equals closing vs opening that head alone; k = all heads
    equals all heads closed vs open."""
    gp = torch.full((3, 4), 0.7)
    score = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    out = targeted_ablation(lm, data, gp, {"F": score}, (0, 1, 12))
    assert out["F"].shape == (3,)
    assert out["F"][0] == 0.0
    top = int(score.flatten().argmax())
    lo, hi = gp.flatten().clone(), gp.flatten().clone()
    lo[top], hi[top] = 0.0, 1.0
    one = mean_logprob(lm, data, lo.view(3, 4)) - mean_logprob(lm, data, hi.view(3, 4))
    assert np.isclose(out["F"][1], float(one), atol=1e-4) and abs(float(one)) > 1e-4
    full_off = mean_logprob(lm, data, torch.zeros(3, 4)) - mean_logprob(lm, data, torch.ones(3, 4))
    assert np.isclose(out["F"][2], float(full_off), atol=1e-4)


def test_nan_loss_stops_with_last_good_gates(lm, data, monkeypatch):
    real = hg_fit.gated_logprob
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(hg_fit, "gated_logprob", flaky)  # the log-probs the fit's loss uses
    cfg = CHGConfig.preset_for("quick", updates=(6, 3, 3), seeds=1, batch_size=4, micro_batch=8)
    res = fit_chg(lm, data, cfg)
    assert res.status == "stopped" and "non-finite" in (res.message or "")
    assert res.updates_done == {"G": 3, "G+": 0, "G-": 0}
    assert torch.isfinite(res.G).all() and torch.equal(res.G, res.G_plus)


def test_bad_input(tmp_path, lm):
    with pytest.raises(InputError, match="tokenises to nothing"):
        token_data([[1, 2]], [[]])
    with pytest.raises(InputError, match="context"):
        token_data([list(range(70))], [[1]], n_ctx=64)
    with pytest.raises(InputError, match="empty"):
        token_data([], None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        hg.load_data_file(lm, empty)
    with pytest.raises(InputError, match="does not exist"):
        hg.load_data_file(lm, tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="unknown CHG option"):
        CHGConfig.preset_for("quick", updatez=3)
    with pytest.raises(InputError, match="preset"):
        CHGConfig.preset_for("fast")
    a, b = token_data([[1, 2]], [[3]]), token_data([[1, 2], [4, 5]], [[3], [6]])
    with pytest.raises(InputError, match="retain set has 1 rows"):
        check_pair(a, b)
    with pytest.raises(InputError, match="frozen"):
        lm.model.lm_head.weight.requires_grad_(True)
        try:
            fit_chg(lm, a, TINY)
        finally:
            lm.model.lm_head.weight.requires_grad_(False)


def test_presets_and_overrides():
    q = CHGConfig.preset_for("quick", seeds=5)
    assert q.seeds == 5 and q.preset == "quick" and q.updates == (15, 25, 25)
    for name in ("quick", "standard"):  # CPU presets are full batch on the rows they build
        c = CHGConfig.preset_for(name)
        assert c.batch_size >= c.rows and c.eval_rows == c.rows
    p = CHGConfig.preset_for("paper")
    assert p.updates == (500, 500, 500) and p.batch_size == 64 and p.lrs[0] == (0.1, 0.01) and p.lam == 0.1
    assert json.dumps(q.to_dict())


def test_contrastive_loss_matches_reference(lm, data):
    """The loss of one update equals the official formula computed with plain gated forwards:
    -mean(lp_R) + mean(clamp(lp_F - lp_R, min=-max_diff)) - lam * mean(clamp(theta, -4, 4)), per gate set;
    a small max_diff makes the clamp bite on some rows and not on others."""
    forget = repeated_tokens_data(VOCAB, n=6, length=8, seed=2)
    cfg = ContrastConfig.preset_for("quick", max_diff=0.045, lam=0.1, micro_batch=4)
    theta = (torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 3).requires_grad_(True)
    rows = [0, 2, 3, 5]
    loss, parts = contrast_loss_fn(lm, data, forget, cfg)(theta, rows)
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    clamped = []
    with torch.no_grad():
        for k in range(2):
            with intervening(lm, [Gate(factors=torch.sigmoid(theta[k]))]):
                lp_r = _plain_logprob(lm, *data.rows(rows))
                lp_f = _plain_logprob(lm, *forget.rows(rows))
            diff = lp_f - lp_r
            clamped += (diff < -cfg.max_diff).tolist()
            ref = -lp_r.mean() + diff.clamp(min=-cfg.max_diff).mean() - cfg.lam * theta[k].clamp(-4, 4).mean()
            assert torch.allclose(loss[k], ref, atol=1e-5)
            assert torch.allclose(parts["forget_lp"][k], lp_f.mean(), atol=1e-5)
    assert any(clamped) and not all(clamped), "the clamp must bite on some rows only"
    assert torch.equal(token_accuracy(lm, data), token_accuracy(lm, data, torch.ones(3, 4)))


def test_contrastive_retain_weight_scales_the_retain_term(lm, data):
    """retain_weight w: loss = -w * mean(lp_R) + hinge - reg, so two weights differ by (w2 - w1) * -mean(lp_R)."""
    forget = repeated_tokens_data(VOCAB, n=6, length=8, seed=2)
    theta = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)) * 2
    out = {}
    for w in (1.0, 3.0):
        cfg = ContrastConfig.preset_for("quick", retain_weight=w, micro_batch=4)
        t = theta.clone().requires_grad_(True)
        out[w] = contrast_loss_fn(lm, data, forget, cfg)(t, [0, 1, 4])
    (l1, p1), (l3, _) = out[1.0], out[3.0]
    assert torch.allclose(l3 - l1, -2.0 * p1["retain_lp"], atol=1e-5)


def test_contrast_splits_hold_out_whole_tasks_and_rows(lm, data, smollm2):
    """Built-in: no held-out task's query or example reaches the fit rows. Files: held-out rows are
    disjoint from the fit rows, every row is used once and the pairing is kept."""
    split = builtin_contrast_split(smollm2, forget="instruction", heldout_tasks=("country_capital",))
    assert split.heldout == "held-out tasks: country_capital"
    capitals = word_table("country_capital")
    fit_text = "\n".join(split.retain.texts + split.forget.texts)
    assert not any(f"Q: {x}\n" in fit_text for x, _ in capitals)
    assert all(INSTRUCTIONS["country_capital"] in t for t in split.eval_forget.texts)
    assert len(split.eval_retain) == len(capitals) - 10
    forget = repeated_tokens_data(VOCAB, n=6, length=8, seed=2)
    rows = split_pair_rows(data, forget, heldout_frac=0.34, seed=1)
    assert len(rows.eval_retain) == 2 and len(rows.retain) == 4 and rows.heldout == "held-out rows: 2 of 6 (seed 1)"
    seen = [tuple(r.tolist()) for r in (*rows.retain.input_ids, *rows.eval_retain.input_ids)]
    assert sorted(seen) == sorted(tuple(r.tolist()) for r in data.input_ids)
    for fit, held in ((rows.retain, rows.forget), (rows.eval_retain, rows.eval_forget)):
        for a, b in zip(fit.input_ids, held.input_ids, strict=True):
            i = [tuple(r.tolist()) for r in data.input_ids].index(tuple(a.tolist()))
            assert torch.equal(b, forget.input_ids[i])
    with pytest.raises(InputError, match="hold out"):
        builtin_contrast_split(smollm2, heldout_tasks=tuple(INSTRUCTIONS))
    with pytest.raises(InputError, match="need at least 2"):
        split_pair_rows(data.subset(1), forget.subset(1))


def test_gate_report_written_by_write_job(tmp_path, lm, data):
    from headmine.atlas import Atlas, write_job
    from headmine.pipeline.gating import gate_model

    report = gate_model(lm, data, TINY, task="toy-repeat")
    assert set(report.ablation) == {"F", "I", "N"}
    path = tmp_path / "atlas.db"
    run_id = write_job(report, path)
    with Atlas.open(path, readonly=True) as db:
        run = db.run(run_id)
        assert run.kind == "chg" and run.status == "complete"
        scores = db.scores(run_id=run_id)
        assert {"F", "N", "I", "G_plus", "F_always", "F_max"} <= set(scores["metric"])
        assert len(db.inputs(run_id)) == len(data)
        names = db.artifact_names(run_id)
        assert {"G", "G_plus", "G_minus", "F", "N", "I", "labels", "curve/G/nll", "targeted_ablation"} <= set(names)
        assert db.artifact(run_id, "F").shape == (2, 3, 4)
        conv = db.artifact(run_id, "convergence")
        assert conv["verdict"] == "not converged" and set(conv["stages"]) == {"G", "G+", "G-"}
        assert len(db.labels(run_id=run_id)) == 0  # a 3-update fit is not converged: its labels are no findings


def test_only_a_converged_fit_writes_labels(lm, data):
    """The same gates written twice: with a failed verdict no LabelRow, with a passed one a label per head
    (facilitating / interfering / irrelevant as set up), ordered scores behind them."""
    from headmine.causal.head_gating.convergence import assess
    from headmine.pipeline.gating import GateReport, head_labels

    gp = torch.tensor([[0.9, 0.1, 0.9, 0.8], [0.95, 0.2, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]]).expand(2, 3, 4).clone()
    gm = torch.tensor([[0.9, 0.1, 0.1, 0.7], [0.05, 0.1, 0.1, 0.9], [0.1, 0.1, 0.1, 0.1]]).expand(2, 3, 4).clone()
    res = hg.CHGResult(G=gp, G_plus=gp, G_minus=gm, config=TINY)
    for converged in (False, True):
        reasons = [] if converged else ["stage G: loss still moving"]
        conv = assess({}, res.seed_agreement(), complete=True, tol=0.01, min_f_r=0.5, min_label_agreement=0.7)
        res.convergence = hg_conv.Convergence(converged=converged, stages={}, agreement=conv.agreement, tol=0.01,
                                              min_f_r=0.5, min_label_agreement=0.7, reasons=reasons)
        run = GateReport(model="tiny", model_info={}, task="t", data=data, result=res).to_atlas()
        assert run.artifacts["summary"]["converged"] is converged
        labels = {(r.layer, r.head): r.head_type for r in run.labels}
        if not converged:
            assert labels == {}
            continue
        assert labels[(0, 0)] == labels[(0, 3)] == labels[(1, 3)] == "facilitating"
        assert labels[(0, 1)] == labels[(1, 1)] == "interfering"
        assert labels[(0, 2)] == labels[(1, 0)] == "irrelevant"
        assert len(labels) == 12 and len(head_labels(res)) == 12


def test_label_kappa_discounts_agreement_by_chance():
    """Two seeds that call 90% of heads irrelevant at independent places agree on ~82% of heads, yet kappa
    is ~0 and the verdict says they disagree beyond chance; identical labels give kappa 1."""
    from headmine.causal.head_gating.convergence import assess
    from headmine.causal.head_gating.results import label_kappa

    gen = torch.Generator().manual_seed(0)
    a = torch.where(torch.rand(2000, generator=gen) < 0.9, 2, 0)
    b = torch.where(torch.rand(2000, generator=gen) < 0.9, 2, 0)
    raw = float((a == b).float().mean())
    assert raw > 0.78 and abs(label_kappa(a, b)) < 0.06
    assert label_kappa(a, a) == 1.0 and label_kappa(torch.full((5,), 2), torch.full((5,), 2)) == 1.0
    agreement = {"F_pearson": 0.9, "label_agreement": raw, "label_kappa": label_kappa(a, b)}
    conv = assess({}, agreement, complete=True, tol=0.01, min_f_r=0.5, min_label_agreement=0.7, min_label_kappa=0.4)
    assert not conv.converged and conv.reasons == [f"seeds disagree beyond chance: label kappa {label_kappa(a, b):.2f} < 0.4"]
    assert assess({}, agreement, complete=True, tol=0.01, min_f_r=0.5, min_label_agreement=0.7).converged
