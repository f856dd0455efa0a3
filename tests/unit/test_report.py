"""The HTML report without a browser: escaping, bad input, output-folder safety, data views, CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from headmine.atlas import Atlas, LabelRow, RunRecord, ScoreRow, load_head_types
from headmine.core.errors import AtlasError, InputError
from headmine.report import MANIFEST, build_report, load_model_data, parse_attn_examples, script_json, slug
from headmine.report.compare import compare_models, compare_runs
from headmine.report.evidence import describe_check, head_evidence
from headmine.report.meaning import meaning_for
from headmine.report.render import SCRIPTS
from headmine.report.runs import model_header
from headmine.report.series import Series, method_agreement, ranks
from tests.browser.synthetic_atlas import EVIL, IOI_PROMOTES, build_synthetic_atlas, write_scan


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
    assert [e["text"] for e in page["attn"]["examples"] if e["name"] == "repeated <tokens>"] == [EVIL]


def test_page_script_and_style_are_inline_and_inert():
    for name in SCRIPTS:
        js = resources.files("headmine.report").joinpath("static", name).read_text(encoding="utf-8")
        assert "</" not in js and "innerHTML" not in js and "eval(" not in js and "fetch(" not in js, name
    css = resources.files("headmine.report").joinpath("static", "report.css").read_text(encoding="utf-8")
    assert "url(" not in css and "@import" not in css


def test_pages_are_self_contained(pages):
    for path in pages.all:
        html = path.read_text(encoding="utf-8")
        assert " src=" not in html and "<link rel=\"stylesheet\"" not in html and "@import" not in html
        assert "Content-Security-Policy" in html
        csp = re.search(r'Content-Security-Policy" content="([^"]+)"', html).group(1)
        scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
        assert len(scripts) == 1  # one executable script; the data block is type="application/json"
        digest = base64.b64encode(hashlib.sha256(scripts[0].encode("utf-8")).digest()).decode()
        assert f"script-src 'sha256-{digest}';" in csp and "unsafe" not in csp.split("script-src")[1].split(";")[0]
        head = html.split("<body>")[0]
        assert "http" not in head.replace("http-equiv", "")


# ----------------------------------------------------------------------------- data
def test_model_data_is_generic_over_methods(atlas):
    path, _ = atlas
    with Atlas.open(path, readonly=True) as db:
        d = load_model_data(db, "synthetic-llama")
    labels = {s.label for s in d.series}
    assert {"induction · score", "previous_token · score", "ablation_mean · delta_logit_diff [ioi]",
            "dla · dla_logit_diff [ioi]", "chg · F [natural_text]", "chg · G_plus [natural_text]"} <= labels
    assert (d.n_layers, d.n_heads) == (4, 6)
    # confirmed roles only: the induction check passed for L2H1/L3H4; previous-token failed; sinks untested
    assert {h: r["status"] for h, r in d.roles.items()} == {"L2H1": "confirmed", "L3H4": "confirmed", "L1H2": "evidence",
                                                           "L0H0": "evidence", "L0H3": "evidence"}
    assert d.roles["L2H1"]["head_type"] == "Induction Head"
    assert d.evidence["L1H2"]["headline"] is None and d.evidence["L1H2"]["evidence"][0]["status"] == "causal check failed"
    assert [x["status"] for x in d.evidence["L2H1"]["evidence"]] == ["CHG convergence not recorded"]
    assert d.n_confirmed_heads == 2 and d.n_confirmed_types == 1
    # the IOI panel: four methods, signs aligned, DLA shares 3 of the top 6
    (ioi,) = d.tasks
    assert [m["method"] for m in ioi["maps"]] == ["ablation_mean", "patching_noising", "attribution", "dla"]
    ag = ioi["agreement"]
    assert ag["k"] == 6 and ag["overlap"][0][1] == 6 and ag["rho"][0][1] == 1.0 and ag["overlap"][0][3] == 3
    assert ioi["top"][0]["head"] == "L3H4" and [c["rank"] for c in ioi["top"][0]["cells"]] == [1, 1, 1, 1]
    assert d.scales["task:ioi:importance"] == {"lo": -2.52, "hi": 2.52, "unit": "logits", "aligned": True, "n_maps": 4,
                                              "diverging": True}
    assert d.scales["scan:score"]["n_maps"] == 5 and d.scales["scan:score"]["lo"] == 0.0
    types = {t["name"]: t for t in d.head_types}
    assert types["Induction Head"]["verdict"] == "confirmed" and types["Previous Token Head"]["verdict"] == "failed"
    assert [x["head"] for x in types["Induction Head"]["confirmed"]] == ["L3H4", "L2H1"] or \
        [x["head"] for x in types["Induction Head"]["confirmed"]] == ["L2H1", "L3H4"]
    tops = types["Induction Head"]["detector_tops"][0]["heads"]
    assert [x["value"] for x in tops] == sorted((x["value"] for x in tops), reverse=True)
    assert list(d.head_types).index(types["Induction Head"]) == 0
    assert len(types["Induction Head"]["papers"]) >= 5
    checks = {c["detector"]: c for c in d.causal_checks}
    assert checks["induction"]["verdict"] == "confirmed" and checks["induction"]["margin_z"] == 18.3
    assert checks["previous_token"]["verdict"] == "failed" and "random draws" in checks["previous_token"]["rule"]
    assert {c["name"] for c in d.curves} >= {"G/loss", "G+/loss", "targeted ablation", "dla · logit (mlp)"}
    rep = [e["name"] for e in d.attn["examples"]].index("repeated <tokens>")
    assert d.attn["patterns"]["L2H1"][rep][9][4] == 0.85
    assert d.attn["promotes"]["L3H4"][1 - rep] == IOI_PROMOTES and d.attn["promotes"]["L3H4"][rep] is None
    assert any(r["component"] == "set" for r in d.other_scores)
    assert all(x in d.papers_by_type for x in ("Induction Head", "Previous Token Head"))
    assert d.chg[0]["converged"] is None and len(d.chg[0]["seeds"]) == 3  # F per seed (the synthetic run stores F only)


def test_meaning_sign_convention():
    abl = meaning_for("ablation", "ioi", "ablation_mean", "delta_logit_diff")
    assert abl.sign == -1 and abl.describe(-2.38) == "ablating the head lowers the IO − S logit difference by 2.38 logits"
    assert meaning_for("dla", "ioi", "dla", "dla_logit_diff").sign == 1
    assert meaning_for("patching", "ioi", "patching_denoising", "delta_logit_diff").sign == 1
    assert meaning_for("patching", "ioi", "patching_noising", "delta_logit_diff").sign == -1
    assert meaning_for("attribution", "ioi", "attribution", "delta_answer_logprob").unit == "nats"
    assert meaning_for("scan", None, "induction", "score").sign == 1
    assert meaning_for("chg", "ioi", "chg", "F").sign == 1
    unknown = meaning_for("mystery", None, "m", "weird")
    assert unknown.sign == 0 and "|value|" in unknown.importance


def test_ranks_handle_ties_and_signs():
    vals = np.array([[0.0, 0.0, 0.0], [0.0, 0.4, -2.0]])
    rank, pct, n = ranks(vals, 1)
    assert n == 6 and rank[1, 1] == 1 and rank[0, 0] == 2 and rank[1, 2] == 6
    assert pct[1, 1] == 100 and pct[1, 2] == 0 and pct[0, 0] == pytest.approx(100 * (1 + 0.5 * 3) / 5)
    assert len({pct[0, j] for j in range(3)}) == 1  # a tie group shares one percentile
    rank, pct, _ = ranks(vals, -1)
    assert rank[1, 2] == 1 and pct[1, 2] == 100
    # effects rank by |value|: a head that works against the answer (+2.0 under ablation) matters too
    rank, pct, _ = ranks(np.array([[-1.0, 2.0, 0.5]]), -1, by_abs=True)
    assert list(rank[0]) == [2, 1, 3] and pct[0, 1] == 100
    rank, _, n = ranks(np.array([[np.nan, 1.0]]), 0)
    assert n == 1 and rank[0, 0] == 0 and rank[0, 1] == 1


def test_method_agreement_on_the_union_of_top_heads():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 8))
    mk = [Series(key=f"s{i}", kind="ablation", task="ioi", method=m, metric=met, run_id=1, values=v,
                 meaning=meaning_for(k, "ioi", m, met))
          for i, (k, m, met, v) in enumerate((("ablation", "ablation_mean", "delta_logit_diff", -base),
                                               ("dla", "dla", "dla_logit_diff", base),
                                               ("ablation", "ablation_zero", "delta_logit_diff", base)))]
    ag = method_agreement(mk, k=10, min_common=20)
    assert ag["k"] == 10 and ag["overlap"][0][1] == 10 and ag["rho"][0][1] == 1.0 and not ag["weak"][0][1]
    # opposite signs: the same heads matter most (|effect|), but their aligned importances anti-correlate
    assert ag["overlap"][0][2] == 10 and ag["rho"][0][2] == -1.0
    few = [Series(key=s.key, kind=s.kind, task=s.task, method=s.method, metric=s.metric, run_id=1,
                  values=np.where(np.arange(48).reshape(6, 8) < 9, s.values, np.nan), meaning=s.meaning) for s in mk]
    assert method_agreement(few, k=10, min_common=20)["weak"][0][1]  # 9 heads in common: greyed


def test_describe_check_and_evidence():
    row = {"detector": "nnm", "metric": "minus_logit_diff", "heads": ["L1H1"], "k": 1, "topk_effect": 1.41,
           "random_mean": 0.157, "random_std": 0.142, "random_effects": [0.1, 0.2], "expected_sign": -1,
           "confirmed": False, "extra": {}}
    c = describe_check(row)
    # ablating a negative name mover should *raise* the logit difference: a +1.41 rise of minus it fails
    assert c["verdict"] == "failed" and c["margin"] < 0 and "raises the IO − S logit difference (helps" in c["rule"]
    assert c["expect"] == "raise it (help)" and c["effect_text"] == "ablating the top-1 lowers the IO − S logit difference by 1.41"
    assert c["effect"] == -1.41
    ok = describe_check({**row, "detector": "ind", "expected_sign": 1, "confirmed": True})
    labels = {"L1H1": [{"head_type": "X Head", "method": "ind", "kind": "scan", "value": 0.9, "threshold": 0.5,
                        "stage": None, "stage_code": "", "run": 1, "note": None}],
              "L0H0": [{"head_type": "X Head", "method": "ind", "kind": "scan", "value": 0.8, "threshold": 0.5,
                        "stage": None, "stage_code": "", "run": 1, "note": None}]}
    ev = head_evidence(labels, [ok], {})
    assert ev["L1H1"]["headline"]["head_type"] == "X Head" and ev["L0H0"]["evidence"][0]["status"] == "outside the tested top-k"


def test_model_header_names_the_quantisation():
    runs = pd.DataFrame({"model_info": [{"name": "smollm2", "source": "/x/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}]})
    h = model_header(runs)
    assert (h["full_name"], h["quantization"], h["dtype"]) == ("SmolLM2-135M-Instruct", "Q4_1", "float32")
    h = model_header(pd.DataFrame({"model_info": [{"source": "HuggingFaceTB/SmolLM2-135M", "dtype": "bfloat16"}]}))
    assert h["full_name"] == "HuggingFaceTB/SmolLM2-135M" and h["quantization"] is None


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
    assert "no head-level scores" in html and "No causal method" in html


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
    (panel,) = d.tasks
    assert [m["label"] for m in panel["maps"]] == ["ablation_zero · delta_logit_diff [ioi]"]
    assert len(panel["extra"]) == 2  # frac_ and the per-position map fold into the task's disclosure
    files = build_report(path, tmp_path / "out")
    html = files.pages["m"].read_text(encoding="utf-8")
    assert "2 other map(s) of this task" in html


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


def test_chg_convergence_verdict_and_diagnostics(tmp_path):
    """A CHG run's ``convergence`` artifact: verdict, reasons and a stage x measure table; labels of an
    unconverged fit stay evidence."""
    path = tmp_path / "a.db"
    conv = {"converged": False, "verdict": "not converged", "reasons": "seeds disagree: F correlation 0.27 < 0.8",
            "tol": 0.05, "F_pearson": 0.27,
            "stages": {"G": {"updates": 20, "rel_change": 0.3, "grad_norm": 0.1, "per_seed": {"rel_change": [0.3, 0.1]}}}}
    with Atlas.open(path) as db:
        run = db.write_run(RunRecord(kind="chg", model="m", task="ioi"),
                           scores=[ScoreRow(layer=0, head=h, method="chg", metric="F", value=0.3 * h) for h in range(4)],
                           labels=[LabelRow(layer=0, head=3, head_type="facilitating", method="chg", value=0.9, threshold=0.5)],
                           artifacts={"convergence": conv, "summary": {"status": "complete"}})
        d = load_model_data(db, "m")
    (c,) = d.chg
    assert c["run"] == run and c["converged"] is False
    assert c["diagnostics"]["reasons"].startswith("seeds disagree")
    assert c["diagnostics"]["rows"] == [{"stage": "G", "values": {"updates": 20, "rel_change": 0.3, "grad_norm": 0.1}}]
    assert d.evidence["L0H3"]["evidence"][0]["status"] == "CHG fit not converged" and not d.roles
    html = build_report(path, tmp_path / "out").pages["m"].read_text(encoding="utf-8")
    assert "Not converged (seeds disagree: F correlation 0.27 &lt; 0.8)" in html


def test_attention_artifact_carries_promoted_tokens():
    from headmine.atlas.artifacts import make_attn_examples, parse_attn_examples

    ex = [{"name": "a", "text": "x y", "tokens": ["x", " y"]}, {"name": "b", "text": "z", "tokens": ["z"]}]
    art = make_attn_examples(ex, {"L0H1": [[[1.0, 0.0], [0.4, 0.6]], None]}, promotes={"L0H1": [[" y", 7], None]})
    assert art["promotes"] == {"L0H1": [[" y", "7"], None]}
    with pytest.raises(ValueError, match="one token list"):
        make_attn_examples(ex, {}, promotes={"L0H1": [[" y"]]})
    parsed, _ = parse_attn_examples({**art, "promotes": {**art["promotes"], "bad": [["q"]], "L1H0": [" y", None]}}, 2, 2)
    assert parsed["promotes"] == {"L0H1": [[" y", "7"], None], "L1H0": [None, None]}
