"""Faults from outside the process: `headmine mine` killed with SIGKILL at random points, and four
scans writing one atlas at once while readers read it.

After every kill the atlas passes SQLite's integrity check and holds only complete runs, none twice;
resuming after the last kill ends with exactly the rows of an uninterrupted run. Concurrent writers all
land, whole, and `headmine heads` and the report work while they write.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from headmine.atlas import Atlas
from headmine.report import build_report

pytestmark = pytest.mark.slow

MINE = [sys.executable, "-m", "headmine", "mine", "toy-induction", "--no-report"]
N_KILLS = 10


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def _rows(path: Path) -> pd.DataFrame:
    """Every score of every stage run, without ids or times: what an interruption must not change."""
    with Atlas.open(path, readonly=True) as db:
        runs = db.runs().set_index("id")
        scores = db.scores()
    scores = scores.assign(kind=scores["run_id"].map(runs["kind"]), task=scores["run_id"].map(runs["task"]))
    cols = ["kind", "task", "method", "metric", "component", "layer", "head"]
    return scores[[*cols, "value"]].sort_values(cols).reset_index(drop=True)


def _n_runs(path: Path) -> int:
    """Complete runs in the atlas now (0 before it exists), read without taking a write lock."""
    if not path.exists():
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM runs WHERE status = 'complete'").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is being created
        return 0
    finally:
        con.close()


def _check_consistent(path: Path, reference_counts: dict[tuple, int]) -> set[str]:
    """Integrity ok, only complete runs, no stage twice, every run with all of its rows; returns the kinds done."""
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = con.execute("SELECT id, kind, task, key, status FROM runs").fetchall()
        counts = dict(con.execute("SELECT run_id, COUNT(*) FROM scores GROUP BY run_id").fetchall())
    finally:
        con.close()
    assert all(status == "complete" for *_, status in runs)
    keys = [(kind, task, key) for _, kind, task, key, _ in runs]
    assert len(keys) == len(set(keys)), f"a stage was written twice: {keys}"
    for run_id, kind, task, _, _ in runs:
        assert counts.get(run_id, 0) == reference_counts[(kind, task)], f"run {run_id} ({kind}) is partial"
    return {kind for _, kind, *_ in runs}


def test_mine_killed_at_random_points_loses_nothing_and_resumes_to_the_same_rows(tmp_path):
    reference = tmp_path / "reference.db"
    done = subprocess.run([*MINE, "--atlas", str(reference)], capture_output=True, text=True, env=_env(), timeout=900)
    assert done.returncode == 0, done.stderr
    con = sqlite3.connect(reference)
    ref_counts = {(k, t): n for k, t, n in con.execute(
        "SELECT kind, task, (SELECT COUNT(*) FROM scores s WHERE s.run_id = r.id) FROM runs r").fetchall()}
    con.close()
    atlas = tmp_path / "killed.db"
    rng = random.Random(7)
    kills, killed_in = 0, []
    while kills < N_KILLS:
        before = _check_consistent(atlas, ref_counts) if atlas.exists() else set()
        n_before = _n_runs(atlas)
        proc = subprocess.Popen([*MINE, "--atlas", str(atlas)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=_env())
        # kill at a random moment: right away in the current stage, or after one more stage has landed
        wait_for = n_before + rng.choice([0, 1, 1])
        while proc.poll() is None and _n_runs(atlas) < wait_for:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 3.0))
        if proc.poll() is not None:  # it finished before the kill: start over on a fresh atlas
            for suffix in ("", "-wal", "-shm"):
                Path(f"{atlas}{suffix}").unlink(missing_ok=True)
            continue
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
        kills += 1
        after = _check_consistent(atlas, ref_counts) if atlas.exists() else set()
        killed_in.append((_n_runs(atlas), sorted(after - before)))
    assert kills == N_KILLS, f"only {kills} kills landed before the run finished: {killed_in}"
    assert len({n for n, _ in killed_in}) >= 3, killed_in  # the kills landed in at least three different stages
    resumed = subprocess.run([*MINE, "--atlas", str(atlas)], capture_output=True, text=True, env=_env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    _check_consistent(atlas, ref_counts)
    got, want = _rows(atlas), _rows(reference)
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got.drop(columns="value"), want.drop(columns="value"))
    assert (got["value"].fillna(0) - want["value"].fillna(0)).abs().max() < 1e-6


SCAN = [sys.executable, "-m", "headmine", "scan", "toy-induction", "-d", "induction,previous_token", "--no-causal"]


def test_four_writers_at_once_all_land_while_readers_read(tmp_path):
    atlas = tmp_path / "shared.db"
    Atlas.open(atlas).close()
    writers = [subprocess.Popen([*SCAN, "--seed", str(w), "--atlas", str(atlas)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=_env()) for w in range(4)]
    reads = 0
    while any(w.poll() is None for w in writers):
        heads = subprocess.run([sys.executable, "-m", "headmine", "heads", "--atlas", str(atlas)], capture_output=True,
                               text=True, env=_env(), timeout=300)
        assert heads.returncode == 0, heads.stderr
        with Atlas.open(atlas, readonly=True) as db:
            if len(db.runs()):
                build_report(atlas, tmp_path / f"report{reads}")
        reads += 1
    for w in writers:
        _, err = w.communicate()
        assert w.returncode == 0, err.decode()
    assert reads >= 1
    with Atlas.open(atlas, readonly=True) as db:
        runs = db.runs()
        assert len(runs) == 4 and set(runs["status"]) == {"complete"}
        counts = db.scores().groupby("run_id").size()
    assert counts.nunique() == 1 and len(counts) == 4  # every run whole, all the same size
    con = sqlite3.connect(atlas)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
