"""`headmine atlas merge`: shards fold into one atlas idempotently, whole (scores, labels, inputs,
artifacts), one transaction per shard; shards that are not atlases or are of a newer schema are refused
before anything is written, and the target's data is never damaged."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from headmine.atlas import SCHEMA_VERSION, Atlas, AtlasRun, InputRow, LabelRow, RunRecord, ScoreRow, write_job
from headmine.atlas import merge as merge_mod
from headmine.atlas.merge import check_shard, merge_shards, shard_bytes
from headmine.cli.main import app
from headmine.core.errors import AtlasError
from headmine.models.loading import LoadedModel
from headmine.pipeline.scan import ScanConfig, scan_model

RUN_COLS = ["key", "kind", "model", "task", "group_id", "status", "started_at", "finished_at", "duration_s", "notes",
            "model_info", "params", "seeds", "versions"]


def _run(i: int, *, model: str = "m", finished: str = "2025-01-01T00:00:00+00:00") -> AtlasRun:
    """A run with every kind of row: scores (one NaN), labels, inputs with text and meta, npy and JSON artifacts."""
    rng = np.random.default_rng(i)
    scores = [ScoreRow(layer=layer, head=head, method="induction", value=float(rng.normal()), n=4, stderr=0.1)
              for layer in range(2) for head in range(3)]
    scores.append(ScoreRow(layer=0, component="mlp", method="dla", metric="logit", value=float("nan")))
    labels = [LabelRow(layer=1, head=2, head_type="induction head", method="induction", value=0.9, threshold=0.5,
                       note=f"run {i}")]
    inputs = [InputRow(idx=j, token_ids=tuple(int(t) for t in rng.integers(0, 50_000, 6)), role="clean",
                       text=f"prompt {j}", meta={"end_pos": 5}) for j in range(3)]
    inputs.append(InputRow(idx=0, token_ids=(2**40, 1), role="big"))  # int64 ids keep their dtype
    artifacts = {"matrix": rng.normal(size=(2, 3)).astype(np.float32), "ids": np.arange(5, dtype=np.int16),
                 "summary": {"i": i, "names": ["a", "b"], "x": 0.5}}
    record = RunRecord(kind="scan", model=model, key=f"job-{i}", task="repeated_tokens", params={"n": i},
                       seeds={"seed": i}, model_info={"source": model}, started_at="2025-01-01T00:00:00+00:00",
                       finished_at=finished, duration_s=1.25 + i, group_id="g", notes=f"note {i}")
    return AtlasRun(record=record, scores=scores, labels=labels, inputs=inputs, artifacts=artifacts)


def _shard(path: Path, *runs: AtlasRun) -> Path:
    for run in runs:
        write_job(run, path)
    return path


def _content(path: Path) -> dict[str, object]:
    """Everything the atlas holds about its runs, without run ids (which a merge renumbers)."""
    with Atlas.open(path, readonly=True) as db:
        runs = db.runs()
        out: dict[str, object] = {"runs": runs[RUN_COLS].to_dict("records")}
        for rid, rec in zip(runs["id"], out["runs"], strict=True):  # type: ignore[call-overload]
            sc = db.scores(run_id=int(rid)).drop(columns="run_id")
            rec["scores"] = sc.to_dict("records")
            rec["labels"] = db.labels(run_id=int(rid)).drop(columns="run_id").to_dict("records")
            rec["inputs"] = db.inputs(int(rid))
            rec["artifacts"] = {n: db.artifact(int(rid), n) for n in db.artifact_names(int(rid))}
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    return bool(a == b) if not (a is pd.NA or b is pd.NA) else a is b


def _digest(path: Path) -> str:
    """A digest of every row of every run table (what 'the target is not damaged' means)."""
    conn = sqlite3.connect(path)
    try:
        h = hashlib.sha256()
        for table in ("runs", "scores", "labels", "inputs", "artifacts"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                h.update(repr(row).encode())
        return h.hexdigest()
    finally:
        conn.close()


def test_merge_copies_runs_whole(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.db", _run(1), _run(2))
    b = _shard(tmp_path / "b.db", _run(3, model="other"))
    report = merge_shards([a, b], tmp_path / "atlas.db")
    assert (report.added, report.already) == (3, 0)
    assert [s.added for s in report.shards] == [2, 1]
    merged = _content(tmp_path / "atlas.db")["runs"]
    expected = _content(a)["runs"] + _content(b)["runs"]  # type: ignore[operator]
    assert _same(merged, expected)
    # the pieces that are easiest to lose, checked directly too
    run3 = merged[2]  # type: ignore[index]
    assert run3["inputs"][3].token_ids == (2**40, 1)
    assert run3["artifacts"]["ids"].dtype == np.int16
    assert np.isnan(next(s["value"] for s in run3["scores"] if s["component"] == "mlp"))
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        assert db.heads(model="other")["head_id"].tolist() == ["L1H2"]
        assert db.find_run(key="job-3") == report.shards[1].run_ids[0]


def test_merge_is_idempotent(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.db", _run(1), _run(2))
    target = tmp_path / "atlas.db"
    first = merge_shards([a], target)
    before = _digest(target)
    again = merge_shards([a, a], target)  # twice more, once listed twice in one call
    assert (first.added, again.added, again.already) == (2, 0, 4)
    assert _digest(target) == before
    # a run that reached the atlas by the ordinary writer is recognised as well
    c = _shard(tmp_path / "c.db", _run(5))
    write_job(_run(5), target)
    assert merge_shards([c], target).already == 1


def test_two_executions_of_one_job_are_two_runs(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.db", _run(1))
    b = _shard(tmp_path / "b.db", _run(1, finished="2025-01-01T00:00:09+00:00"))  # same job, run again later
    report = merge_shards([a, b], tmp_path / "atlas.db")
    assert report.added == 2


def test_merge_of_a_real_scan_keeps_what_the_report_reads(tmp_path: Path, toy: LoadedModel) -> None:
    result = scan_model(toy, ScanConfig(detectors=("induction",), causal=False, batch_size=4,
                                        probe_params={"repeated_tokens": {"n": 4}}))
    shard = tmp_path / "shard.db"
    run_id = write_job(result, shard)
    report = merge_shards([shard], tmp_path / "atlas.db")
    with Atlas.open(shard, readonly=True) as src, Atlas.open(tmp_path / "atlas.db", readonly=True) as dst:
        new = report.shards[0].run_ids[0]
        pd.testing.assert_frame_equal(src.scores(run_id=run_id).drop(columns="run_id"),
                                      dst.scores(run_id=new).drop(columns="run_id"))
        assert src.inputs(run_id) == dst.inputs(new) and len(dst.inputs(new)) == 4
        assert src.artifact_names(run_id) == dst.artifact_names(new)
        assert _same(src.artifact(run_id, "attn_examples"), dst.artifact(new, "attn_examples"))


def test_newer_schema_shard_is_refused_and_nothing_is_merged(tmp_path: Path) -> None:
    target = _shard(tmp_path / "atlas.db", _run(0))
    before = _digest(target)
    good = _shard(tmp_path / "good.db", _run(1))
    newer = _shard(tmp_path / "newer.db", _run(2))
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(AtlasError) as err:
        merge_shards([good, newer], target)
    assert "newer.db" in err.value.problem and "newer" in err.value.problem and "nothing was merged" in err.value.problem
    assert "upgrade headmine" in (err.value.hint or "")
    assert _digest(target) == before  # the good shard listed first was not merged either


@pytest.mark.parametrize("kind", ["text", "foreign", "empty", "missing"])
def test_a_shard_that_is_not_an_atlas_is_refused(tmp_path: Path, kind: str) -> None:
    target = _shard(tmp_path / "atlas.db", _run(0))
    before = _digest(target)
    bad = tmp_path / "bad.db"
    if kind == "text":
        bad.write_text("not a database at all, just some text that is long enough")
    elif kind == "foreign":
        conn = sqlite3.connect(bad)
        conn.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        conn.commit()
        conn.close()
    elif kind == "empty":
        sqlite3.connect(bad).close()
        bad.write_bytes(b"")
    with pytest.raises(AtlasError) as err:
        merge_shards([bad], target)
    assert str(bad.name) in err.value.problem
    assert _digest(target) == before
    assert not (kind == "foreign" and "not a headmine atlas" not in err.value.problem)


def test_an_atlas_is_never_merged_into_itself(tmp_path: Path) -> None:
    target = _shard(tmp_path / "atlas.db", _run(0))
    with pytest.raises(AtlasError, match="into itself"):
        check_shard(target, target)


def test_a_failure_midway_rolls_the_shard_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _shard(tmp_path / "atlas.db", _run(0))
    first = _shard(tmp_path / "first.db", _run(1))
    broken = _shard(tmp_path / "broken.db", _run(2), _run(3))
    before_first = None
    copy = merge_mod._copy_run
    calls = {"n": 0}

    def failing_copy(src, dst, old_id, row):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the second run of the second shard: the disk "fills up"
            raise sqlite3.OperationalError("database or disk is full")
        return copy(src, dst, old_id, row)

    monkeypatch.setattr(merge_mod, "_copy_run", failing_copy)
    with pytest.raises(AtlasError, match="rolled back"):
        merge_shards([first, broken], target)
    monkeypatch.setattr(merge_mod, "_copy_run", copy)
    with Atlas.open(target, readonly=True) as db:
        assert db.runs()["key"].tolist() == ["job-0", "job-1"]  # the first shard stays; none of the broken one
        before_first = _digest(target)
    report = merge_shards([first, broken], target)  # once the cause is gone, the merge completes
    assert (report.added, report.already) == (2, 1)
    assert _digest(target) != before_first


def test_shard_bytes_are_a_complete_atlas(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "a.db", _run(1), _run(2))
    copy = tmp_path / "copy.db"
    copy.write_bytes(shard_bytes(shard))
    assert _same(_content(copy), _content(shard))


def test_cli_merge(tmp_path: Path) -> None:
    a = _shard(tmp_path / "a.db", _run(1))
    b = _shard(tmp_path / "b.db", _run(2), _run(3))
    target = tmp_path / "atlas.db"
    runner = CliRunner()
    out = runner.invoke(app, ["atlas", "merge", str(a), str(b), "--into", str(target)])
    assert out.exit_code == 0, out.output
    assert "3 run(s) added, 0 already there" in " ".join(out.output.split())
    again = runner.invoke(app, ["atlas", "merge", str(a), str(b), "--into", str(target)])
    assert "0 run(s) added, 3 already there" in " ".join(again.output.split())
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, this is not an atlas")
    refused = runner.invoke(app, ["atlas", "merge", str(bad), "--into", str(target)])
    assert refused.exit_code == 2
    assert "refusing the shard" in " ".join(refused.output.split()) and "Traceback" not in refused.output
