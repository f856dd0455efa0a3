"""`headmine batch --ray` on a local Ray cluster that this test starts (2 CPUs): toy-induction jobs and a
SmolLM2 scan run as Ray tasks in worker processes, a job made to fail is retried and reported while the
others go on, and the merged atlas holds the same runs (scores and labels) as the same plan run locally
without Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
from typer.testing import CliRunner

from headmine.atlas import Atlas
from headmine.cli.main import app
from headmine.pipeline.batch import BatchEvent, run_batch
from headmine.pipeline.plan_file import parse_plan

PLAN = """
[defaults]
n = 4
causal = false
max_retries = 1
resources = { num_cpus = 1 }

[[matrix]]
models = ["toy-induction"]
jobs = ["scan:induction,previous_token", "dla:induction"]
seed = [0, 1]

[[jobs]]
model = "smollm2"
job = "scan:induction"

[[jobs]]
model = "toy-induction"
job = "ablation:ioi"          # IOI needs single-token names, which the toy vocabulary lacks: fails every time
"""


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _runs(atlas: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """job key -> (scores, labels) of its run, without run ids."""
    out = {}
    with Atlas.open(atlas, readonly=True) as db:
        for run in db.runs().itertuples():
            scores = db.scores(run_id=run.id).drop(columns="run_id").reset_index(drop=True)
            labels = db.labels(run_id=run.id).drop(columns="run_id").reset_index(drop=True)
            out[run.key] = (scores, labels)
    return out


@pytest.mark.slow
def test_plan_on_ray_equals_the_plan_run_locally(tmp_path: Path, ray_cluster: None) -> None:
    plan = parse_plan(PLAN, tmp_path / "plan.toml")
    assert len(plan.jobs) == 6
    events: list[BatchEvent] = []
    on_ray = run_batch(plan, tmp_path / "ray.db", tmp_path / "ray-shards", ray="auto", on_event=events.append)
    assert ray.is_initialized()  # the cluster the test started is used, and left running for its owner

    status = {r.job.label: r.status for r in on_ray.jobs}
    assert status.pop("toy-induction ablation:ioi (n=4)") == "failed"
    assert set(status.values()) == {"done"}
    bad = on_ray.failed[0]
    assert bad.attempts == 2 and all("IOI" in e for e in bad.errors)
    assert [e.status for e in events if e.report is bad] == ["started", "retry", "started", "failed"]
    # every job ran in a Ray worker process, not here
    assert all(r.worker and not r.worker.endswith(f":{os.getpid()}") for r in on_ray.jobs if r.status == "done")
    assert on_ray.merge is not None and on_ray.merge.added == 5

    local = run_batch(plan, tmp_path / "local.db", tmp_path / "local-shards")
    assert [r.status for r in local.jobs] == [r.status for r in on_ray.jobs]
    ray_runs, local_runs = _runs(tmp_path / "ray.db"), _runs(tmp_path / "local.db")
    assert sorted(ray_runs) == sorted(local_runs) == sorted(r.job.key for r in on_ray.jobs if r.status == "done")
    for key, (scores, labels) in local_runs.items():
        r_scores, r_labels = ray_runs[key]
        pd.testing.assert_frame_equal(r_scores.drop(columns=["value", "stderr"]), scores.drop(columns=["value", "stderr"]))
        # workers run torch on 1 thread, this process on several: sums may differ in the last bits
        np.testing.assert_allclose(r_scores["value"], scores["value"], rtol=1e-5, atol=1e-6)
        pd.testing.assert_frame_equal(r_labels.drop(columns="value"), labels.drop(columns="value"))
        np.testing.assert_allclose(r_labels["value"], labels["value"], rtol=1e-5, atol=1e-6)
    smollm2 = next(r for r in on_ray.jobs if r.job.model == "smollm2")
    scores, labels = ray_runs[smollm2.job.key]
    assert scores["layer"].nunique() == 30 and len(labels) > 0  # a real scan of all 30 layers, with labelled heads


@pytest.mark.slow
def test_a_job_the_cluster_can_never_run_fails_at_once(tmp_path: Path, ray_cluster: None) -> None:
    plan = parse_plan("""
[[jobs]]
model = "toy-induction"
job = "scan:induction"
causal = false
n = 2
resources = { num_gpus = 1 }
max_retries = 3
""")
    result = run_batch(plan, tmp_path / "atlas.db", tmp_path / "shards", ray="auto")
    (job,) = result.jobs
    assert (job.status, job.attempts) == ("failed", 1)  # not retried: it could never be scheduled
    assert "asks for 1 GPU but the whole Ray cluster has 0" in job.errors[0]
    assert result.merge is None


@pytest.mark.slow
def test_cli_batch_on_ray(tmp_path: Path, ray_cluster: None) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text('[[jobs]]\nmodel = "toy-induction"\njob = "dla:induction"\nn = 4\n')
    atlas = tmp_path / "atlas.db"
    runner = CliRunner()
    first = runner.invoke(app, ["batch", str(plan_file), "--atlas", str(atlas), "--ray", "auto"])
    text = " ".join(first.output.split())
    assert first.exit_code == 0, first.output
    assert "on Ray (auto)" in text and "done toy-induction dla:induction (n=4): 1 run(s)" in text
    assert "merged 1 run(s)" in text and "Ray start-up" in text
    again = runner.invoke(app, ["batch", str(plan_file), "--atlas", str(atlas), "--ray", "auto"])
    assert again.exit_code == 0
    assert "0 done, 1 skipped (in the atlas)" in " ".join(again.output.split())
