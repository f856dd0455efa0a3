"""Scan on real checkpoints: SmolLM2 (all detectors, causal check, atlas round trip) and the toy model."""

from __future__ import annotations

import os
import sqlite3
import stat

import numpy as np
import pytest

from headmine.atlas import write_job
from headmine.core.errors import AtlasError, HeadmineError
from headmine.pipeline.scan import ScanConfig, scan_model

pytestmark = pytest.mark.slow

SMALL = {"repeated_tokens": {"n": 2, "seq_len": 20}, "natural_text": {"n": 2, "seq_len": 32}, "ioi": {"n": 4},
         "needle": {"n": 1, "context_lengths": (128,), "depths": (0.5,)}, "text_tokens": {"max_tokens": 100}}


@pytest.fixture(scope="module")
def all_detectors(smollm2):
    return scan_model(smollm2, ScanConfig(probe_params=SMALL, causal=False, batch_size=4, max_new_tokens=4))


@pytest.fixture(scope="module")
def induction_scan(smollm2):
    cfg = ScanConfig(detectors=("induction", "previous_token"), probe_params=SMALL, causal=True, top_k=5,
                     n_random=3, causal_n=2, batch_size=4)
    return scan_model(smollm2, cfg)


def test_every_detector_runs_on_smollm2(all_detectors, smollm2):
    g = smollm2.geometry
    for det in all_detectors.detectors:
        m = all_detectors.matrix(det.name)
        assert m.shape == (g.n_layers, g.n_heads), det.name
        if det.name != "retrieval":  # retrieval is NaN when the model misses every needle
            assert np.isfinite(m).all(), det.name
    assert set(all_detectors.timings) >= {"repeated_tokens", "natural_text", "ioi", "needle", "ordinal_tokens"}
    # the induction heads are mid-depth heads with near-perfect scores
    top = all_detectors.top("induction", 3)
    assert top.value.min() > 0.7


def test_induction_ablation_beats_random_heads(induction_scan):
    check = induction_scan.causal["induction"]
    assert check.confirmed, check.to_dict()
    assert check.topk_effect > 1.0 and check.topk_effect > 5 * max(check.random_effects)
    assert (induction_scan.scores.method == "causal:induction").any()


def test_atlas_round_trip_and_export(induction_scan, tmp_path):
    from headmine.atlas import Atlas, export_run, read_inputs_export

    path = tmp_path / "atlas.db"
    run_id = write_job(induction_scan, str(path))
    with Atlas.open(path, readonly=True) as db:
        scores = db.scores(run_id=run_id)
        assert len(scores) == len(induction_scan.scores)
        heads = db.heads(head_type="induction")
        assert not heads.empty and heads.iloc[0].score > 0.7
        out = export_run(db, run_id, "inputs", "jsonl", tmp_path / "inputs.jsonl")
    back = read_inputs_export(out)
    got = {(r.role, r.idx): tuple(r.token_ids) for r in back}
    for task, rows in induction_scan.inputs.items():
        for i, ids in enumerate(rows):
            assert got[(task, i)] == ids


def test_bad_atlas_paths_leave_nothing_half_written(induction_scan, tmp_path):
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE stuff (x)")
    con.commit()
    con.close()
    with pytest.raises(AtlasError):
        write_job(induction_scan, str(foreign))
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(AtlasError):
        write_job(induction_scan, str(text))
    good = tmp_path / "good.db"
    write_job(induction_scan, str(good))
    con = sqlite3.connect(good)
    n_scores = con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    con.execute("UPDATE meta SET value = '999' WHERE key LIKE '%version%'")
    con.commit()
    con.close()
    with pytest.raises(AtlasError):
        write_job(induction_scan, str(good))
    ro = tmp_path / "ro.db"
    write_job(induction_scan, str(ro))
    os.chmod(ro, stat.S_IRUSR)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write read-only files")
        with pytest.raises(AtlasError, match="read-only"):
            write_job(induction_scan, str(ro))
    finally:
        os.chmod(ro, stat.S_IRUSR | stat.S_IWUSR)
    con = sqlite3.connect(good)
    assert con.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == n_scores
    con.close()


def test_toy_model_ranks_induction_and_previous_token_heads():
    from headmine.models.loading import load_model

    toy = load_model("toy-induction")  # ships with headmine
    # positional joins so its top heads (L0H2, a current-token head the induction circuit needs) stay out of
    # the random control sets: the toy has 8 heads and 6 of them matter for repetition
    cfg = ScanConfig(detectors=("induction", "previous_token", "positional"),
                     probe_params={"repeated_tokens": {"n": 8, "seq_len": 20}},
                     top_k=2, n_random=4, causal_n=8)
    try:
        res = scan_model(toy, cfg)
    except HeadmineError as err:  # e.g. the toy tokenizer cannot tokenise the corpus
        pytest.fail(str(err))
    n_heads = toy.geometry.n_heads
    ind = res.top("induction", n_heads)
    prev = res.top("previous_token", n_heads)
    assert set(ind.layer.iloc[:2]) == {1}
    assert set(prev.layer.iloc[:2]) == {0}
    for name in ("induction", "previous_token"):
        check = res.causal[name]
        assert check.confirmed, check.to_dict()
        assert check.topk_effect > 2.0 > max(check.random_effects)


def test_a_check_whose_task_cannot_be_built_is_skipped_with_a_note(toy):
    """The toy's word-level tokenizer has the treebank's words but too few single-token agreement nouns: the
    syntactic_dependency detector still scores its heads, its causal check is skipped and the scan says why
    (it used to fail the whole scan stage of `mine`)."""
    cfg = ScanConfig(detectors=("syntactic_dependency", "previous_token"), top_k=2, n_random=2, causal_n=8,
                     probe_params={"repeated_tokens": {"n": 4, "seq_len": 12}})
    res = scan_model(toy, cfg)
    assert "syntactic_dependency" not in res.causal and "previous_token" in res.causal
    assert res.detector_scores("syntactic_dependency").value.notna().any()
    assert any("'syntactic_dependency': causal check skipped" in n and "agreement" in n for n in res.notes), res.notes


def test_causal_checks_equal_one_forward_per_head_set(toy):
    """The checks measure all sets of a task in one staggered sweep; each detector's top-k effect equals one
    plain forward with its heads mean-ablated (the bookkeeping gives every detector its own set)."""
    from headmine.capture import CaptureSpec, run_capture
    from headmine.causal import Mean, run_with_interventions
    from headmine.core.ids import HeadId, Site
    from headmine.pipeline.causal_check import evaluation_of
    from headmine.pipeline.results import CAUSAL_SEED_OFFSET

    cfg = ScanConfig(detectors=("induction", "previous_token"), top_k=2, n_random=3, causal_n=4,
                     probe_params={"repeated_tokens": {"n": 4, "seq_len": 12}})
    res = scan_model(toy, cfg)
    evaluation = evaluation_of("repeated_tokens")
    ev = evaluation.build(toy.tokenizer, seed=cfg.seed + CAUSAL_SEED_OFFSET,
                          **evaluation.kwargs(cfg.causal_n, res.probe_params.get("repeated_tokens")))
    ids, mask = ev.batch.input_ids, ev.batch.attention_mask
    ref = run_capture(toy, CaptureSpec(sites=frozenset({Site.Z}), keep_logits=True), ids, mask)
    clean = ev.measure(ref.logits)
    values = Mean.from_record(ref, toy.geometry.heads()).values
    effects = {}
    for name in ("induction", "previous_token"):
        check = res.causal[name]
        heads = tuple(HeadId.parse(h) for h in check.heads)
        want = ev.measure(run_with_interventions(toy, ids, mask, [Mean(heads=heads, values=values)])) - clean
        assert check.clean == pytest.approx(clean, abs=1e-5)
        assert check.topk_effect == pytest.approx(want, abs=1e-4), (name, check.topk_effect, want)
        effects[name] = want
        assert len(check.random_effects) == 3
    assert abs(effects["induction"] - effects["previous_token"]) > 1e-3  # two different sets, told apart
