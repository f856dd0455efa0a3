"""A `mine` job in a batch (toy-induction, locally): its stages land in its shard under the job's group;
a failure halfway is retried and resumes in the same shard (finished stages are not redone); its runs
are keyed by the job only once every stage is written, and a plan run again skips it."""

from __future__ import annotations

from pathlib import Path

import pytest

from headmine.atlas import Atlas
from headmine.pipeline import mine as mine_module
from headmine.pipeline.batch import BatchEvent, run_batch
from headmine.pipeline.plan_file import parse_plan

PLAN = """
[[jobs]]
model = "toy-induction"
job = "mine:quick"
max_retries = 1
"""


@pytest.mark.slow
def test_a_mine_job_resumes_on_retry_and_is_keyed_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = mine_module._toolkit
    failures = {"left": 1}
    keys_when_failed: list[list[object]] = []
    shards = tmp_path / "shards"
    plan = parse_plan(PLAN)
    (job,) = plan.jobs

    def flaky(method, task, **extra):  # type: ignore[no-untyped-def]
        run = real(method, task, **extra)
        if method != "patching":
            return run

        def once(*args, **kwargs):  # type: ignore[no-untyped-def]
            if failures["left"]:
                failures["left"] -= 1
                with Atlas.open(shards / f"{job.key}.db", readonly=True) as db:
                    keys_when_failed.append(db.runs()["key"].tolist())
                raise RuntimeError("the node went away")
            return run(*args, **kwargs)

        return once

    monkeypatch.setattr(mine_module, "_toolkit", flaky)
    events: list[BatchEvent] = []
    result = run_batch(plan, tmp_path / "atlas.db", shards, on_event=events.append)
    (report,) = result.jobs
    assert (report.status, report.attempts) == ("done", 2)
    assert "RuntimeError: the node went away" in report.errors[0]
    assert [e.status for e in events] == ["started", "retry", "started", "done"]
    assert keys_when_failed == [[None, None]]  # scan and ablation were written, not yet keyed as a finished job
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        runs = db.runs()
    assert {"scan", "ablation", "patching", "attribution", "dla", "chg", "attention"} <= set(runs["kind"])
    assert (runs["kind"] == "scan").sum() == 1  # the retry resumed: the scan was not run twice
    assert set(runs["key"]) == {job.key} and set(runs["group_id"]) == {job.key}
    assert result.merge is not None and result.merge.added == len(runs) == report.runs
    again = run_batch(plan, tmp_path / "atlas.db", shards)
    assert [r.status for r in again.jobs] == ["skipped"]
