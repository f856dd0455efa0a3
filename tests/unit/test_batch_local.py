"""`headmine batch` without Ray, on the shipped toy model: each job writes its shard through the existing
pipeline entry points, a failing job is retried and reported while the others go on, the shards merge
into the atlas, and a plan run again skips what the atlas holds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from headmine.atlas import Atlas, AtlasRun, RunRecord, write_job
from headmine.causal.head_gating import CHGConfig, task_data
from headmine.causal.methods import get_method
from headmine.cli.main import app
from headmine.core.errors import InputError
from headmine.models.loading import LoadedModel
from headmine.pipeline.batch import BatchEvent, run_batch
from headmine.pipeline.causal import run_causal
from headmine.pipeline.gating import gate_model
from headmine.pipeline.plan_file import parse_plan
from headmine.pipeline.scan import ScanConfig, probe_sizes, scan_model

PLAN = """
[defaults]
n = 4
max_retries = 1

[[matrix]]
models = ["toy-induction"]
jobs = ["scan:induction,previous_token", "dla:induction"]
causal = false

[[jobs]]
model = "toy-induction"
job = "ablation:ioi"          # the toy vocabulary has no single-token names: fails in the job, every time
"""


def _scores(atlas: Path, key: str) -> pd.DataFrame:
    with Atlas.open(atlas, readonly=True) as db:
        run_id = db.find_run(key=key)
        assert run_id is not None
        return db.scores(run_id=run_id).drop(columns=["run_id"]).reset_index(drop=True)


def test_local_batch_runs_retries_merges_and_skips(tmp_path: Path, toy: LoadedModel) -> None:
    plan = parse_plan(PLAN, tmp_path / "plan.toml")
    scan_job, dla_job, _ = plan.jobs
    atlas, shards = tmp_path / "atlas.db", tmp_path / "shards"
    events: list[BatchEvent] = []
    result = run_batch(plan, atlas, shards, on_event=events.append)

    assert [r.status for r in result.jobs] == ["done", "done", "failed"]
    bad = result.jobs[2]
    assert bad.attempts == 2 and len(bad.errors) == 2 and "IOI" in bad.errors[-1]
    assert [e.status for e in events if e.report is bad] == ["started", "retry", "started", "failed"]
    assert result.merge is not None and (result.merge.added, result.merge.already) == (2, 0)
    assert sorted(p.name for p in shards.glob("*.db")) == sorted([f"{scan_job.key}.db", f"{dla_job.key}.db"])

    # the atlas holds what the pipeline entry points compute for these settings
    direct = scan_model(toy, ScanConfig(detectors=("induction", "previous_token"), probe_params=probe_sizes(4),
                                        causal=False))
    stored = _scores(atlas, scan_job.key)
    pd.testing.assert_frame_equal(stored[["layer", "head", "method", "metric"]],
                                  direct.scores[["layer", "head", "method", "metric"]].reset_index(drop=True),
                                  check_dtype=False)
    assert stored["value"].to_numpy() == pytest.approx(direct.scores["value"].to_numpy(), abs=1e-9, nan_ok=True)
    dla = run_causal(toy, get_method("dla").config(task="induction", n=4))
    assert _scores(atlas, dla_job.key)["value"].sum() == pytest.approx(dla.frame["value"].dropna().sum(), abs=1e-9)

    # run again: the two jobs in the atlas are skipped, the failing one is tried (and fails) again
    again = run_batch(plan, atlas, shards, max_retries=0)
    assert [r.status for r in again.jobs] == ["skipped", "skipped", "failed"]
    assert again.jobs[2].attempts == 1 and again.merge is None

    # a batch stopped before its merge: the shards hold the jobs, so they are merged without running again
    fresh = tmp_path / "fresh.db"
    cached = run_batch(parse_plan(PLAN.split("[[jobs]]")[0]), fresh, shards)
    assert [(r.status, r.attempts) for r in cached.jobs] == [("cached", 0), ("cached", 0)]
    pd.testing.assert_frame_equal(_scores(fresh, scan_job.key), stored)


def test_cli_batch_prints_a_line_per_job_and_exits_1_on_failure(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(PLAN.replace('"dla:induction"', ""))
    atlas = tmp_path / "out" / "atlas.db"
    out = CliRunner().invoke(app, ["batch", str(plan_file), "--atlas", str(atlas), "--max-retries", "0"])
    text = " ".join(out.output.split())
    assert out.exit_code == 1, out.output
    assert "done toy-induction scan:induction,previous_token" in text
    assert "failed toy-induction ablation:ioi (n=4): after 1 attempt(s): only 0 IOI names" in text
    assert "1 done, 0 skipped (in the atlas), 0 from earlier shards, 1 failed; merged 1 run(s)" in text
    assert (atlas.parent / "shards").is_dir()


def test_a_multi_run_job_is_keyed_once_all_its_runs_are_written(tmp_path: Path) -> None:
    shard = tmp_path / "shard.db"
    for group in ("job", "job", "other"):
        write_job(AtlasRun(record=RunRecord(kind="scan", model="m")), shard, group_id=group)
    with Atlas.open(shard) as db:
        assert db.find_run(key="k") is None
        assert db.tag_group("job", "k") == 2
        assert db.runs(group_id="job")["key"].tolist() == ["k", "k"]
        assert db.runs(group_id="other")["key"].isna().all()


def test_ray_missing_is_a_clear_error_before_anything_is_created(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra looks like
    plan = parse_plan(PLAN)
    with pytest.raises(InputError, match="Ray is not installed") as err:
        run_batch(plan, tmp_path / "atlas.db", tmp_path / "shards", ray="auto")
    assert 'pip install "headmine[ray]"' in (err.value.hint or "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_gate_job_is_the_gate_pipeline_with_the_plan_settings(tmp_path: Path, toy: LoadedModel) -> None:
    plan = parse_plan('[[jobs]]\nmodel = "toy-induction"\njob = "gate:induction"\nn = 4\nseed = 2\nseeds = 1\n'
                      'updates = [3, 2, 2]\n')
    result = run_batch(plan, tmp_path / "atlas.db", tmp_path / "shards")
    assert [r.status for r in result.jobs] == ["done"], result.jobs[0].errors
    data, prompts = task_data(toy, "induction", n=4, seed=2)
    direct = gate_model(toy, data, CHGConfig.preset_for("quick", seeds=1, updates=(3, 2, 2)), task="induction",
                        prompts=prompts)
    stored = _scores(tmp_path / "atlas.db", plan.jobs[0].key)
    expected = pd.DataFrame([vars(r) for r in direct.to_atlas().score_rows()])
    assert len(stored) == len(expected) > 0
    np.testing.assert_allclose(stored["value"].to_numpy(), expected["value"].to_numpy(), rtol=1e-6, atol=1e-9)
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        params = db.run(db.find_run(key=plan.jobs[0].key)).params
    assert (params["updates"], params["seeds"], params["rows"]) == ([3, 2, 2], 1, 4)
