"""The atlas database: round trips, atomic writes, errors, exports. No torch needed."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from headmine.atlas import (
    SCHEMA_VERSION,
    Atlas,
    InputRow,
    LabelRow,
    RunRecord,
    ScoreRow,
    export_run,
    read_inputs_export,
)
from headmine.core.errors import AtlasError, InputError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _run(**kw) -> RunRecord:
    base = dict(
        kind="scan",
        model="tiny-gpt2",
        key="abc123",
        model_info={"source": "hub", "file_hash": "f00", "dtype": "float32", "n_layers": 2},
        task="repeated_tokens",
        params={"seq_len": 16, "batch": np.int64(4)},
        seeds=[0, 1],
        versions={"headmine": "0.1.0"},
        started_at="2025-01-01T00:00:00+00:00",
        duration_s=1.5,
        group_id="mine-1",
    )
    base.update(kw)
    return RunRecord(**base)


def _scores() -> list[ScoreRow]:
    rows = [
        ScoreRow(layer=layer, head=head, method="induction", value=float(layer + head / 10), n=8, stderr=0.01)
        for layer in range(2)
        for head in range(3)
    ]
    rows.append(ScoreRow(component="mlp", layer=1, method="ablation_zero", metric="delta_loss", value=0.25))
    rows.append(ScoreRow(layer=0, head=0, method="previous_token", value=float("nan")))
    return rows


INPUTS = [
    InputRow(idx=0, role="clean", token_ids=[50256, 0, 17, 2**31 - 1], text="When Mary and John"),
    InputRow(idx=0, role="corrupted", token_ids=np.array([5, 6, 7], dtype=np.int64), meta={"swap": [1, 2]}),
    InputRow(idx=1, role="clean", token_ids=(2**40, -1, 3), text=""),
    InputRow(idx=2, role="text", token_ids=[]),
]


def _count_rows(path: Path) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        return {
            t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("runs", "scores", "labels", "inputs", "artifacts")
        }
    finally:
        con.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "atlas.db"


def _write_full(db: Atlas) -> int:
    return db.write_run(
        _run(),
        scores=_scores(),
        labels=[
            LabelRow(
                layer=1, head=2, head_type="induction head", method="induction", value=1.2, threshold=0.5
            ),
            LabelRow(layer=0, head=1, head_type="Previous Head", method="previous_token", value=0.9),
        ],
        inputs=INPUTS,
        artifacts={
            "pattern": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "summary": {"top": [[1, 2]], "ok": True, "x": np.float64(0.5)},
            "ints": np.array([1, 2, 3], dtype=np.int16),
        },
    )


def test_round_trip_survives_reopen(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        run_id = _write_full(db)
    with Atlas.open(db_path, create=False) as db:
        runs = db.runs()
        assert list(runs["id"]) == [run_id]
        row = runs.iloc[0]
        assert row["model"] == "tiny-gpt2" and row["kind"] == "scan" and row["group_id"] == "mine-1"
        assert row["params"] == {"seq_len": 16, "batch": 4}
        assert row["model_info"]["file_hash"] == "f00"
        assert row["seeds"] == [0, 1]
        assert row["finished_at"]  # filled at write time

        rec = db.run(run_id)
        assert rec.key == "abc123" and rec.duration_s == 1.5 and rec.task == "repeated_tokens"

        scores = db.scores(run_id=run_id)
        assert len(scores) == 8
        heads = scores[(scores.component == "head") & (scores.method == "induction")]
        assert heads.set_index(["layer", "head"])["value"].to_dict() == {
            (layer, head): layer + head / 10 for layer in range(2) for head in range(3)
        }
        assert set(heads["n"]) == {8}
        mlp = scores[scores.component == "mlp"].iloc[0]
        assert mlp["head"] == -1 and mlp["metric"] == "delta_loss" and mlp["value"] == 0.25
        assert pd.isna(mlp["n"]) and pd.isna(mlp["stderr"])
        assert np.isnan(scores[scores.method == "previous_token"]["value"].iloc[0])
        assert set(scores["model"]) == {"tiny-gpt2"} and set(scores["kind"]) == {"scan"}
        assert len(db.scores(model="tiny-gpt2", method="induction", component="head")) == 6
        assert db.scores(model="other").empty

        labels = db.labels(run_id=run_id)
        # aliases are stored under the canonical name, with the survey stage filled in
        assert set(labels["head_type"]) == {"Induction Head", "Previous Token Head"}
        ind = labels[labels.head_type == "Induction Head"].iloc[0]
        assert ind["stage"] == "Latent Reasoning" and ind["threshold"] == 0.5
        assert len(db.labels(head_type="IH")) == 1

        heads_df = db.heads(head_type="Induction Head", min_score=1.0)
        assert list(heads_df["head_id"]) == ["L1H2"] and heads_df["score"].iloc[0] == 1.2
        assert db.heads(min_score=5).empty
        assert len(db.heads(model="tiny-gpt2")) == 2

        got = db.inputs(run_id)
        assert [(r.role, r.idx, r.token_ids, r.text, r.meta) for r in got] == [
            ("clean", 0, (50256, 0, 17, 2**31 - 1), "When Mary and John", None),
            ("corrupted", 0, (5, 6, 7), None, {"swap": [1, 2]}),
            ("clean", 1, (2**40, -1, 3), "", None),
            ("text", 2, (), None, None),
        ]

        assert db.artifact_names(run_id) == ["ints", "pattern", "summary"]
        pattern = db.artifact(run_id, "pattern")
        assert isinstance(pattern, np.ndarray) and pattern.dtype == np.float32
        np.testing.assert_array_equal(pattern, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
        assert db.artifact(run_id, "ints").dtype == np.int16
        assert db.artifact(run_id, "summary") == {"top": [[1, 2]], "ok": True, "x": 0.5}
        with pytest.raises(AtlasError, match="no artifact 'nope'"):
            db.artifact(run_id, "nope")
        assert db.models() == ["tiny-gpt2"]


def test_find_run_returns_newest_complete(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        assert db.find_run(key="k") is None
        first = db.write_run(_run(key="k"))
        second = db.write_run(_run(key="k"))
        db.write_run(_run(key="k", status="failed"))
        db.write_run(_run(key="other", model="gpt2", kind="ablation", group_id=None))
        assert second > first
        assert db.find_run(key="k") == second
        assert db.models() == ["gpt2", "tiny-gpt2"]
        assert len(db.runs(model="gpt2")) == 1
        assert len(db.runs(kind="scan")) == 3
        assert len(db.runs(group_id="mine-1")) == 3


def test_wal_mode_and_meta(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        assert db.journal_mode == "wal"
        assert db.schema_version == SCHEMA_VERSION == 1
        assert db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    con.close()
    assert meta["app"] == "headmine" and meta["schema_version"] == "1"


def _failing_scores():
    yield ScoreRow(layer=0, head=0, method="induction", value=1.0)
    yield ScoreRow(layer=0, head=1, method="induction", value=2.0)
    raise RuntimeError("the capture crashed half-way")


def test_write_interrupted_by_generator_leaves_nothing(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        keep = db.write_run(_run(key="kept"), scores=_scores())
        before = _count_rows(db_path)
        with pytest.raises(RuntimeError, match="half-way"):
            db.write_run(_run(key="broken"), scores=_failing_scores(), inputs=INPUTS)
        assert _count_rows(db_path) == before
        assert db.find_run(key="broken") is None
        # the connection is still usable and not stuck in a transaction
        assert not db.conn.in_transaction
        db.write_run(_run(key="after"))
        assert db.find_run(key="kept") == keep


def test_write_with_bad_row_types_leaves_nothing(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        before = _count_rows(db_path)
        with pytest.raises(TypeError):
            ScoreRow(layer=0, head=0, method="induction", value="high")  # type: ignore[arg-type]

        def labels_then_garbage():
            yield LabelRow(layer=0, head=0, head_type="Induction Head", method="induction", value=1.0)
            yield {"layer": 0, "head": 1}  # not a LabelRow

        with pytest.raises(TypeError, match="LabelRow"):
            db.write_run(_run(), scores=_scores(), labels=labels_then_garbage())
        # artifacts are written last: a bad one still rolls back the scores written before it
        with pytest.raises(AtlasError, match="artifact 'bad'"):
            db.write_run(_run(), scores=_scores(), artifacts={"ok": [1], "bad": object()})
        with pytest.raises(AtlasError, match="object array"):
            db.write_run(_run(), scores=_scores(), artifacts={"obj": np.array([{}, 1], dtype=object)})
        with pytest.raises(AtlasError, match="not JSON-serialisable"):
            db.write_run(_run(params={"fn": object()}), scores=_scores())
        assert _count_rows(db_path) == before


def test_interrupted_process_leaves_no_rows(db_path: Path) -> None:
    """A writer process killed in the middle of write_run leaves the atlas without that run."""
    with Atlas.open(db_path) as db:
        db.write_run(_run(key="first"))
    code = f"""
import os
from headmine.atlas import Atlas, RunRecord, ScoreRow
def rows():
    for i in range(1000):
        yield ScoreRow(layer=0, head=i, method="induction", value=1.0)
        if i == 500:
            os._exit(3)  # die with the transaction open, no cleanup
db = Atlas.open({str(db_path)!r})
db.write_run(RunRecord(kind="scan", model="m", key="killed"), scores=rows())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    with Atlas.open(db_path) as db:
        assert db.find_run(key="killed") is None
        assert db.find_run(key="first") is not None
        assert db.scores().empty


def test_row_validation() -> None:
    with pytest.raises(TypeError):
        RunRecord(kind="", model="m")
    with pytest.raises(TypeError):
        ScoreRow(layer=1.5, head=0, method="x", value=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ScoreRow(layer=0, head=0, method="x", value=True)
    with pytest.raises(ValueError, match="head >= 0"):
        ScoreRow(layer=0, method="x", value=1.0)  # head defaults to -1, component to 'head'
    with pytest.raises(TypeError):
        InputRow(idx=0, token_ids="hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        InputRow(idx=0, token_ids=np.array([0.5, 1.0]))
    row = ScoreRow(layer=np.int64(1), head=np.int32(2), method="x", value=np.float16(0.5))
    assert type(row.layer) is int and type(row.value) is float


def test_error_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("this is a text file, not a database\n")
    with pytest.raises(AtlasError, match="not a SQLite file") as info:
        Atlas.open(path)
    assert info.value.hint


def test_error_foreign_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(AtlasError, match="not a headmine atlas") as info:
        Atlas.open(path)
    assert "customers" in str(info.value) and info.value.hint
    # a meta table from another app is foreign too
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('app', 'someone-else')")
    con.commit()
    con.close()
    with pytest.raises(AtlasError, match="not a headmine atlas"):
        Atlas.open(path)
    # and the foreign file was not modified (no atlas tables, journal mode untouched)
    con = sqlite3.connect(path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"customers", "meta"}
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


def test_error_newer_schema(db_path: Path) -> None:
    Atlas.open(db_path).close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(AtlasError, match="newer") as info:
        Atlas.open(db_path)
    assert "upgrade" in info.value.hint


def test_error_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(AtlasError, match="no atlas at") as info:
        Atlas.open(tmp_path / "missing.db", create=False)
    assert "headmine mine" in info.value.hint and "create=True" not in info.value.hint  # words a CLI user can act on
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(AtlasError, match="no atlas at"):
        Atlas.open(tmp_path / "missing.db", readonly=True)
    with pytest.raises(AtlasError, match="does not exist"):
        Atlas.open(tmp_path / "nope" / "atlas.db")
    with pytest.raises(AtlasError, match="folder"):
        Atlas.open(tmp_path)


def test_readonly_mode_refuses_writes(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        db.write_run(_run())
    with Atlas.open(db_path, readonly=True) as db:
        assert len(db.runs()) == 1
        with pytest.raises(AtlasError, match="read-only") as info:
            db.write_run(_run())
        assert info.value.hint
        assert db.ensure_catalog() is False
        # even raw SQL cannot write through a read-only connection
        with pytest.raises(sqlite3.OperationalError):
            db.conn.execute("DELETE FROM runs")
    assert _count_rows(db_path)["runs"] == 1


@pytest.mark.skipif(
    IS_ROOT,
    reason="running as root: chmod does not stop root from writing; "
    "the read-only case is covered by test_readonly_mode_refuses_writes",
)
def test_readonly_location_errors(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "atlas.db"
    with Atlas.open(path) as db:
        db.write_run(_run())
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(AtlasError, match="read-only") as info:
            Atlas.open(path)
        assert "readonly=True" in info.value.hint
        with pytest.raises(AtlasError, match="read-only"):
            Atlas.open(folder / "new.db")
        with Atlas.open(path, readonly=True) as db:  # reading still works
            assert len(db.runs()) == 1
    finally:
        os.chmod(folder, 0o755)
        os.chmod(path, 0o644)


def test_concurrent_writers(db_path: Path) -> None:
    """Several processes writing at once: every run lands whole."""
    Atlas.open(db_path).close()
    code = """
import sys
from headmine.atlas import Atlas, RunRecord, ScoreRow
w = int(sys.argv[2])
with Atlas.open(sys.argv[1]) as db:
    for r in range(5):
        db.write_run(RunRecord(kind="scan", model=f"m{w}", key=f"{w}-{r}"),
                     scores=[ScoreRow(layer=0, head=h, method="induction", value=float(h)) for h in range(50)])
"""
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(db_path), str(w)], stderr=subprocess.PIPE)
        for w in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with Atlas.open(db_path) as db:
        assert len(db.runs()) == 20
        counts = db.scores().groupby("run_id").size()
        assert set(counts) == {50}


def test_foreign_keys_cascade(db_path: Path) -> None:
    with Atlas.open(db_path) as db:
        run_id = _write_full(db)
        with pytest.raises(sqlite3.IntegrityError):
            db.conn.execute(
                "INSERT INTO scores (run_id, layer, head, method, value) VALUES (999, 0, 0, 'x', 1.0)"
            )
        db.conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    counts = _count_rows(db_path)
    assert counts == {"runs": 0, "scores": 0, "labels": 0, "inputs": 0, "artifacts": 0}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_inputs_round_trip_exact_ids(db_path: Path, tmp_path: Path, fmt: str) -> None:
    with Atlas.open(db_path) as db:
        run_id = _write_full(db)
        out = export_run(db, run_id, "inputs", fmt, tmp_path / f"inputs.{fmt}")
        expected = db.inputs(run_id)
    assert out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    back = read_inputs_export(out)
    assert [(r.role, r.idx, r.token_ids, r.meta) for r in back] == [
        (r.role, r.idx, r.token_ids, r.meta) for r in expected
    ]
    assert back[0].text == "When Mary and John"
    # the raw files carry the ids too, readable without headmine
    if fmt == "parquet":
        df = pd.read_parquet(out)
        assert [list(v) for v in df["token_ids"]] == [list(r.token_ids) for r in expected]
    elif fmt == "csv":
        df = pd.read_csv(out)
        assert [json.loads(v) for v in df["token_ids"]] == [list(r.token_ids) for r in expected]
    else:
        lines = out.read_text().splitlines()
        assert [json.loads(line)["token_ids"] for line in lines] == [list(r.token_ids) for r in expected]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_scores(db_path: Path, tmp_path: Path, fmt: str) -> None:
    with Atlas.open(db_path) as db:
        run_id = _write_full(db)
        expected = db.scores(run_id=run_id)
        out = export_run(db, run_id, "scores", fmt, tmp_path / f"scores.{fmt}")
    if fmt == "csv":
        df = pd.read_csv(out)
    elif fmt == "parquet":
        df = pd.read_parquet(out)
    else:
        df = pd.read_json(out, lines=True)
    assert len(df) == len(expected) == 8
    assert list(df["layer"]) == list(expected["layer"])
    np.testing.assert_allclose(df["value"].astype(float), expected["value"], equal_nan=True)


def test_export_errors_and_atomic_replace(db_path: Path, tmp_path: Path) -> None:
    with Atlas.open(db_path) as db:
        run_id = _write_full(db)
        with pytest.raises(InputError):
            export_run(db, run_id, "labels", "csv", tmp_path / "x.csv")  # type: ignore[arg-type]
        with pytest.raises(InputError):
            export_run(db, run_id, "scores", "xlsx", tmp_path / "x.xlsx")  # type: ignore[arg-type]
        with pytest.raises(AtlasError, match="no run 42"):
            export_run(db, 42, "scores", "csv", tmp_path / "x.csv")
        target = tmp_path / "scores.csv"
        target.write_text("old contents")
        export_run(db, run_id, "scores", "csv", target)
        assert target.read_text().startswith("run_id,")


def test_atlas_does_not_import_torch() -> None:
    code = "import sys, headmine.atlas, headmine.atlas.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_check_target_validates_without_creating(tmp_path: Path) -> None:
    """Commands check their atlas path before a long job and leave no empty atlas behind when refused."""
    target = tmp_path / "new.db"
    Atlas.check_target(target)
    assert not target.exists()
    with pytest.raises(AtlasError, match="does not exist"):
        Atlas.check_target(tmp_path / "missing" / "a.db")
    with pytest.raises(AtlasError, match="folder, not an atlas"):
        Atlas.check_target(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 10)
    with pytest.raises(AtlasError, match="not"):
        Atlas.check_target(junk)
    assert junk.read_bytes() == b"not sqlite at all" * 10


def test_full_disk_is_a_clear_error_and_damages_nothing(db_path: Path) -> None:
    """ENOSPC as SQLite sees it (SQLITE_FULL, here from a page-count cap on the file): the failed run is
    rolled back whole, the error says the disk is full, and every run stored before stays readable."""
    with Atlas.open(db_path) as db:
        first = db.write_run(RunRecord(kind="scan", model="m", key="kept"),
                             scores=[ScoreRow(layer=0, head=h, method="induction", value=float(h)) for h in range(20)])
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = [ScoreRow(layer=layer, head=h, method="induction", value=0.5) for layer in range(200) for h in range(50)]
        with pytest.raises(AtlasError, match="disk is full") as info:
            db.write_run(RunRecord(kind="scan", model="m", key="too-big"), scores=big)
        assert "intact" in str(info.value) and info.value.hint
    with Atlas.open(db_path, readonly=True) as db:
        assert db.find_run(key="too-big") is None and db.find_run(key="kept") == first
        assert len(db.scores(run_id=first)) == 20
        assert db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
