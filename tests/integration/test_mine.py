"""`headmine mine` end to end on the toy model: every stage lands, a re-run resumes, an interruption keeps finished stages."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from headmine.atlas import Atlas
from headmine.cli.main import app
from headmine.pipeline import mine as mine_module
from headmine.pipeline.mine import mine, plan
from headmine.report.data import load_model_data


@pytest.fixture()
def atlas_path(tmp_path):
    return tmp_path / "atlas.db"


def test_mine_writes_every_applicable_stage_then_resumes(toy, atlas_path):
    first = mine(toy, atlas_path, budget="quick")
    kinds = {"scan", "ablation", "patching", "attribution", "dla", "chg", "attention"}
    with Atlas.open(atlas_path, create=False) as db:
        runs = db.runs(group_id=first.group_id)
    assert kinds <= set(runs.kind)
    assert any("factual" in note and "not applicable" in note for note in first.notes)
    with Atlas.open(atlas_path, create=False) as db:
        examples = db.artifact(first.run_ids["scan + causal checks"], "attn_examples")
    assert {"L1H0", "L1H2"} <= set(examples["patterns"])  # the induction heads' attention views for the report
    tokens = examples["examples"][0]["tokens"]
    rows = examples["patterns"]["L1H0"][0]
    assert len(rows) == len(tokens) and all(abs(sum(r) - 1) < 1e-2 for r in rows)
    # the last stage stores attention examples and promoted tokens for every head some method ranks top 20
    with Atlas.open(atlas_path, create=False) as db:
        views = db.artifact(first.run_ids["attention examples of every method's top heads"], "attn_examples")
        tops = load_model_data(db, toy.name).page_json()["tops"]
    assert tops and set(tops) <= set(views["patterns"])
    with Atlas.open(atlas_path, create=False) as db:  # scan inputs are stored as text as well as ids
        scan_inputs = [r for r in db.inputs(first.run_ids["scan + causal checks"]) if r.role == "repeated_tokens"]
    assert len(scan_inputs) and all(r.text == toy.tokenizer.decode(list(r.token_ids)) for r in scan_inputs)
    assert all(len(toks) == 5 and all(isinstance(t, str) for t in toks) for lists in views["promotes"].values()
               for toks in lists)
    second = mine(toy, atlas_path, budget="quick")
    assert second.run_ids == {} and len(second.skipped) == len(first.run_ids)
    with Atlas.open(atlas_path, create=False) as db:
        assert len(db.runs(group_id=first.group_id)) == len(runs)
    assert [s.kind for s in plan(toy, atlas_path, budget="quick").todo] == ["factual"]  # not applicable: retried


def test_interrupted_mine_keeps_finished_stages_and_redoes_nothing(toy, atlas_path, monkeypatch):
    real = mine_module._toolkit

    def interrupting(method, task, **extra):
        run = real(method, task, **extra)
        if method != "patching":
            return run

        def boom(*args, **kwargs):
            raise KeyboardInterrupt

        return boom

    monkeypatch.setattr(mine_module, "_toolkit", interrupting)
    with pytest.raises(KeyboardInterrupt):
        mine(toy, atlas_path, budget="quick")
    with Atlas.open(atlas_path, create=False) as db:
        done = set(db.runs().kind)
    assert done == {"scan", "ablation"}  # stages before the interruption, nothing half-written after it
    monkeypatch.setattr(mine_module, "_toolkit", real)
    resumed = mine(toy, atlas_path, budget="quick")
    assert {"scan + causal checks", "ablation sweep (induction)"} <= set(resumed.skipped)
    assert "activation patching (induction)" in resumed.run_ids


def test_mine_cli_writes_the_report(tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["mine", "toy-induction", "--atlas", str(tmp_path / "a.db"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "toy-induction.html").exists()
    assert "estimated" in result.output and "report:" in result.output


def test_mine_cli_in_bfloat16_through_accelerate_records_where_it_ran(tmp_path):
    """`mine --device auto --dtype bfloat16` (issue 12): every run's provenance and the report say so."""
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["mine", "toy-induction", "--atlas", str(tmp_path / "a.db"), "--out", str(out),
                                      "--device", "auto", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    with Atlas.open(tmp_path / "a.db", readonly=True) as db:
        infos = list(db.runs()["model_info"])
    assert len(infos) >= 5 and all(i["dtype"] == "bfloat16" and i["device"] == "auto" for i in infos)
    page = (out / "toy-induction.html").read_text()
    assert "computed in bfloat16" in page or "bfloat16 on auto" in page
    assert "device auto" in page


def test_mine_rejects_an_unknown_budget(tmp_path):
    result = CliRunner().invoke(app, ["mine", "toy-induction", "--atlas", str(tmp_path / "a.db"), "--budget", "huge"])
    assert result.exit_code == 2
    assert "unknown budget 'huge'" in result.output
    assert not (tmp_path / "a.db").exists()
