"""The HTML report without a browser: escaping, bad input, output-folder safety, data views, CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from headmine.atlas import Atlas, LabelRow, RunRecord, ScoreRow, load_head_types
from headmine.core.errors import AtlasError, InputError
from headmine.report import MANIFEST, build_report, load_model_data, parse_attn_examples, script_json, slug
from headmine.report.compare import compare_models, compare_runs
from tests.browser.synthetic_atlas import EVIL, build_synthetic_atlas, write_scan


@pytest.fixture(scope="module")
def atlas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("atlas") / "atlas.db"
    return path, build_synthetic_atlas(path)


@pytest.fixture(scope="module")
def pages(atlas, tmp_path_factory: pytest.TempPathFactory):
    path, ids = atlas
    return build_report(path, tmp_path_factory.mktemp("out") / "report", compare=(ids["scan"], ids["scan_b"]))


# ----------------------------------------------------------------------------- escaping
def test_script_json_escapes_everything_that_could_end_a_script():
    value = {"a": EVIL, "n": float("nan"), "inf": float("inf"), "list": [1.5, "x&y"]}
    text = str(script_json(value))
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert json.loads(text) == {"a": EVIL, "n": None, "inf": None, "list": [1.5, "x&y"]}


def test_hostile_strings_never_reach_the_page_as_markup(pages):
    for path in pages.all:
        html = path.read_text(encoding="utf-8")
        assert "<script>alert" not in html
        assert "</script><!--" not in html
        assert html.count("<script") == 2  # the JSON data block and the page's own script
        assert "\u2028" not in html.split('id="hm-data"')[1].split("</script>")[0]
    html = pages.pages["synthetic-llama"].read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &#34;quoted&#34; &amp; &#39;single&#39;" in html
    data = html.split('<script type="application/json" id="hm-data">')[1].split("</script>")[0]
    page = json.loads(data)
    assert page["attn"]["examples"][0]["text"] == EVIL


def test_page_script_and_style_are_inline_and_inert():
    js = resources.files("headmine.report").joinpath("static", "report.js").read_text(encoding="utf-8")
    assert "</" not in js and "innerHTML" not in js and "eval(" not in js and "fetch(" not in js
    css = resources.files("headmine.report").joinpath("static", "report.css").read_text(encoding="utf-8")
    assert "url(" not in css and "@import" not in css


def test_pages_are_self_contained(pages):
    for path in pages.all:
        html = path.read_text(encoding="utf-8")
        assert " src=" not in html and "<link rel=\"stylesheet\"" not in html and "@import" not in html
        assert "Content-Security-Policy" in html
        head = html.split("<body>")[0]
        assert "http" not in head.replace("http-equiv", "")


# ----------------------------------------------------------------------------- data
def test_model_data_is_generic_over_methods(atlas):
    path, _ = atlas
    with Atlas.open(path, readonly=True) as db:
        d = load_model_data(db, "synthetic-llama")
    labels = {s.label for s in d.series}
    assert {"induction · score", "previous_token · score", "ablation_zero · effect [repeated_tokens]",
            "chg · F [natural_text]", "chg · G_plus [natural_text]"} <= labels
    assert (d.n_layers, d.n_heads) == (4, 6)
    assert d.roles["L2H1"]["head_type"] == "Induction Head"  # canonical labels beat CHG's role labels
    assert d.roles["L1H2"]["head_type"] == "Previous Token Head"
    assert [x["head_type"] for x in d.labels["L2H1"]] == ["Induction Head", "facilitating"]
    # agreement: induction scores and the ablation/patching effects rank the same heads first
    ag = d.agreement
    idx = {lab: i for i, lab in enumerate(ag["labels"])}
    rho = ag["rho"][idx["induction · score"]][idx["ablation_zero · effect [repeated_tokens]"]]
    assert rho is not None and rho > 0.2
    assert all(ag["rho"][i][i] == 1.0 for i in range(len(ag["keys"])))
    types = {t["name"]: t for t in d.head_types}
    assert types["Induction Head"]["labelled"][0]["head"] in {"L2H1", "L3H4"}
    assert len(types["Induction Head"]["papers"]) >= 5
    assert d.causal_checks and d.causal_checks[0]["confirmed"] is True
    assert {c["name"] for c in d.curves} >= {"G/loss", "G+/loss", "targeted ablation", "dla · logit (mlp)"}
    assert d.attn["patterns"]["L2H1"][0][9][4] == 0.85
    assert any(r["component"] == "set" for r in d.other_scores)
    assert all(x in d.papers_by_type for x in ("Induction Head", "Previous Token Head"))


def test_labels_use_the_catalog_vocabulary():
    assert "Induction Head" in load_head_types()


def test_bad_attention_artifacts_are_skipped_with_notes():
    assert parse_attn_examples("nonsense", 2, 2) == ({}, [parse_attn_examples("nonsense", 2, 2)[1][0]])
    data, notes = parse_attn_examples(
        {"examples": [{"tokens": ["a", 3]}, "bad"], "patterns": {"L0H0": [[[1.0], [0.5, "x"]], None], "oops": [1]}}, 2, 2
    )
    assert data["examples"][0]["tokens"] == ["a", "3"] and data["examples"][1]["tokens"] == []
    assert data["patterns"]["L0H0"][0] == [[1.0], [0.5, None]]
    assert any("oops" in n for n in notes)


def test_compare_runs_and_models(atlas):
    path, ids = atlas
    with Atlas.open(path, readonly=True) as db:
        c = compare_runs(db, ids["scan"], ids["scan_b"])
        assert c.diffs and all(p["rho"] is not None for p in c.pairs if "nan_demo" not in p["label"])
        assert {p["label"] for p in c.pairs} >= {"induction · score", "attention_sink · score"}
        m = compare_models(db, "synthetic-llama", "other/small model")  # 4x6 vs 3x4: no difference maps
        assert m.pairs and not m.diffs and all(p["rho"] is None for p in m.pairs)
        assert any("chg" in k for k in m.only_a)
        with pytest.raises(InputError):
            compare_runs(db, ids["scan"], ids["scan"])
        with pytest.raises(AtlasError, match="no run 999"):
            compare_runs(db, ids["scan"], 999)
        with pytest.raises(AtlasError, match="no runs for model"):
            compare_models(db, "synthetic-llama", "nope")


# ----------------------------------------------------------------------------- bad input
def test_empty_missing_and_foreign_atlases(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.db"
    Atlas.open(empty).close()
    with pytest.raises(AtlasError, match="holds no runs"):
        build_report(empty, out)
    zero = tmp_path / "zero.db"
    zero.write_bytes(b"")
    with pytest.raises(AtlasError, match="empty SQLite file"):
        build_report(zero, out)
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    with pytest.raises(AtlasError, match="not a SQLite file"):
        build_report(text, out)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE songs (title TEXT)")
    with pytest.raises(AtlasError, match="not a headmine atlas"):
        build_report(foreign, out)
    with pytest.raises(AtlasError, match="no atlas at"):
        build_report(tmp_path / "missing.db", out)
    assert not out.exists()  # nothing is written when the atlas is bad


def test_model_with_no_runs(atlas, tmp_path):
    path, _ = atlas
    with pytest.raises(AtlasError, match="no runs for model 'gpt-nine'") as err:
        build_report(path, tmp_path / "out", model="gpt-nine")
    assert "synthetic-llama" in err.value.hint


def test_model_with_runs_but_no_head_scores(tmp_path):
    path = tmp_path / "a.db"
    with Atlas.open(path) as db:
        db.write_run(RunRecord(kind="factual", model="m"), scores=[ScoreRow(component="mlp", layer=0, method="f", value=1.0)])
    files = build_report(path, tmp_path / "out")
    html = files.pages["m"].read_text(encoding="utf-8")
    assert "no head-level scores" in html and "No head-level scores yet." in html


def test_output_folder_with_user_files_is_refused_and_untouched(atlas, tmp_path):
    path, _ = atlas
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "index.html").write_text("my own index")
    with pytest.raises(InputError, match="did not write") as err:
        build_report(path, out)
    assert "headmine-report" in err.value.hint
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "notes.txt"]
    assert (out / "index.html").read_text() == "my own index"


def test_rerun_into_own_folder_keeps_user_files(atlas, tmp_path):
    path, _ = atlas
    out = tmp_path / "report"
    build_report(path, out, model="synthetic-llama")
    (out / "my-notes.md").write_text("mine")
    files = build_report(path, out)  # overwrites only files listed in the manifest
    assert (out / "my-notes.md").read_text() == "mine"
    manifest = json.loads((out / MANIFEST).read_text())
    assert "my-notes.md" not in manifest["files"] and "index.html" in manifest["files"]
    assert set(files.pages) == {"synthetic-llama", "synthetic-gpt2", "other/small model"}
    # a user file with the name of a page headmine has not written there before is never replaced
    out2 = tmp_path / "report2"
    build_report(path, out2, model="synthetic-llama")
    (out2 / "synthetic-gpt2.html").write_text("user's page")
    with pytest.raises(InputError, match=r"synthetic-gpt2\.html"):
        build_report(path, out2)
    assert (out2 / "synthetic-gpt2.html").read_text() == "user's page"


def test_output_path_that_is_a_file(atlas, tmp_path):
    path, _ = atlas
    f = tmp_path / "report.html"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        build_report(path, f)


def test_slug_is_a_safe_file_name():
    for name in ("../../etc/passwd", "org/model", ".hidden", "", "a b<c>", "x" * 300):
        s = slug(name)
        assert "/" not in s and not s.startswith(".") and s and len(s) < 100
    assert slug("smollm2") == "smollm2"
    assert slug("a/b") != slug("a-b")


def test_labels_without_a_catalog_type_still_render(tmp_path):
    path = tmp_path / "a.db"
    with Atlas.open(path) as db:
        db.write_run(RunRecord(kind="chg", model="m"),
                     scores=[ScoreRow(layer=0, head=h, method="chg", metric="F", value=float(h)) for h in range(3)],
                     labels=[LabelRow(layer=0, head=2, head_type="facilitating", method="chg", value=2.0, threshold=0.5)])
    files = build_report(path, tmp_path / "out")
    assert "facilitating" in files.pages["m"].read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- no torch, CLI
def test_report_package_does_not_import_torch():
    code = "import sys, headmine.report, headmine.cli.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_catalog_and_report(atlas, tmp_path):
    from headmine.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["catalog"])
    assert res.exit_code == 0, res.output
    assert "66 papers" in res.output and "Induction" in res.output and "detector" in res.output
    res = runner.invoke(app, ["catalog", "--head-type", "IH"])
    assert res.exit_code == 0 and "repeated_tokens" in res.output
    res = runner.invoke(app, ["catalog", "--search", "copy suppression"])
    assert res.exit_code == 0 and "Copy" in res.output and "(1)" in res.output
    res = runner.invoke(app, ["catalog", "--stage", "KR"])
    assert res.exit_code == 0 and "Memory" in res.output
    res = runner.invoke(app, ["catalog", "--head-type", "inductoin"])
    assert res.exit_code == 2 and "did you mean" in res.output
    path, _ = atlas
    out = tmp_path / "r"
    res = runner.invoke(app, ["report", "--atlas", str(path), "--out", str(out), "--compare-models",
                              "synthetic-llama", "synthetic-gpt2"])
    assert res.exit_code == 0, res.output
    assert (out / "index.html").exists() and (out / "compare-synthetic-llama-vs-synthetic-gpt2.html").exists()
    res = runner.invoke(app, ["report", "--atlas", str(tmp_path / "nope.db"), "--out", str(out)])
    assert res.exit_code == 2 and "no atlas at" in res.output and "Traceback" not in res.output


def test_scan_written_twice_shows_newest(tmp_path):
    path = tmp_path / "a.db"
    with Atlas.open(path) as db:
        write_scan(db, "m", seed=0, text="first")
        newest = write_scan(db, "m", seed=3, text="second")
        d = load_model_data(db, "m")
    assert {s.run_id for s in d.series} == {newest}
    assert {x["run"] for items in d.labels.values() for x in items} == {newest}
    assert np.isfinite(d.series[0].values).all()


def test_causal_pipeline_metric_names(tmp_path):
    """delta_/frac_ metrics from the causal pipeline; per-position maps fold away and stay out of agreement."""
    path = tmp_path / "a.db"
    rng = np.random.default_rng(0)
    with Atlas.open(path) as db:
        rows = []
        for layer in range(3):
            for head in range(4):
                v = float(rng.normal())
                rows += [ScoreRow(layer=layer, head=head, method="ablation_zero", metric="delta_logit_diff", value=v),
                         ScoreRow(layer=layer, head=head, method="ablation_zero", metric="frac_logit_diff", value=v / 2),
                         ScoreRow(layer=layer, head=head, method="ablation_zero", metric="delta_logit_diff@pos1", value=v)]
        db.write_run(RunRecord(kind="ablation", model="m", task="ioi"), scores=rows)
        d = load_model_data(db, "m")
    assert [d.agreement["labels"][0]] == ["ablation_zero · delta_logit_diff [ioi]"]
    files = build_report(path, tmp_path / "out")
    html = files.pages["m"].read_text(encoding="utf-8")
    assert "1 per-position map(s)" in html


def test_make_attn_examples_round_trips_through_the_atlas(tmp_path):
    from headmine.report import make_attn_examples

    pat = np.tril(np.full((3, 3), 1 / 3))
    art = make_attn_examples([{"name": "p", "text": "a b c", "tokens": ["a", " b", " c"]}],
                             {"L0H1": [pat], "L1H0": [None]})
    assert art["patterns"]["L0H1"][0] == [[0.333], [0.333, 0.333], [0.333, 0.333, 0.333]]
    with pytest.raises(ValueError):
        make_attn_examples([{"tokens": ["a"]}], {"head0": [pat]})
    path = tmp_path / "a.db"
    with Atlas.open(path) as db:
        db.write_run(RunRecord(kind="scan", model="m"), scores=[ScoreRow(layer=1, head=1, method="x", value=1.0)],
                     artifacts={"attn_examples": art})
        d = load_model_data(db, "m")
    assert d.attn["patterns"]["L0H1"][0][2] == [0.333, 0.333, 0.333] and d.attn["patterns"]["L1H0"] == [None]
