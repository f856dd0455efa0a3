"""The notebook API (``import headmine as hm``) on the toy induction model: the verbs return the
pipeline's own numbers, ranks follow the report's convention, figures and views show the right data,
and errors are one short message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import headmine as hm
from headmine.api.notebook import ErrorDisplay, _handler, error_text, install_error_display
from headmine.capture import CaptureSpec, run_capture
from headmine.core.errors import DetectorError, HeadmineError, InputError
from headmine.core.ids import HeadId, Site

pytestmark = pytest.mark.slow  # a toy scan and sweep (seconds)


@pytest.fixture(scope="module")
def scanned(toy):
    return hm.scan(toy, detectors=["induction", "previous_token"], causal=True)


def test_import_is_light_and_names_are_explicit():
    code = "import sys, headmine as hm; print('torch' in sys.modules, callable(hm.scan), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]  # torch loads on first use of the API, not on import
    assert set(hm.API_NAMES) <= set(hm.__all__) and set(hm.API_NAMES) <= set(dir(hm))
    with pytest.raises(AttributeError):
        _ = hm.no_such_name


def test_scan_table_is_the_jobs_scores_ranked(scanned):
    df = scanned.to_pandas()
    assert list(df.columns[:8]) == ["layer", "head", "method", "metric", "value", "n", "stderr", "rank"]
    job_scores = scanned.job.scores
    ind = job_scores[(job_scores["method"] == "induction") & (job_scores["metric"] == "score")]
    mine = df[(df["method"] == "induction") & (df["metric"] == "score")]
    merged = ind.merge(mine, on=["layer", "head"], suffixes=("_job", "_api"))
    assert len(merged) == 8 and np.array_equal(merged["value_job"].to_numpy(), merged["value_api"].to_numpy())
    # a score ranks by its value: rank 1 is the largest, and the table starts with rank-1 rows
    best = ind.loc[ind["value"].idxmax()]
    assert mine.loc[mine["rank"] == 1, ["layer", "head"]].values.tolist() == [[int(best["layer"]), int(best["head"])]]
    assert (df["rank"].iloc[:3] == 1).all()
    top = scanned.top(2, method="induction")
    # the toy's induction heads are L1H0 and L1H2 (known by construction)
    assert set(top["head_id"]) == {"L1H0", "L1H2"} and top["value"].is_monotonic_decreasing
    assert "higher = more of the pattern" in top["says"].iloc[0]


def test_scan_labels_and_several_methods_need_a_choice(scanned):
    labels = scanned.labels()
    induction = labels[labels["head_type"] == "Induction Head"]
    assert {(r.layer, r.head) for r in induction.itertuples()} >= {(1, 0), (1, 2)}
    with pytest.raises(InputError, match="several methods"):
        scanned.top(3)
    with pytest.raises(InputError, match="no metric"):
        scanned.matrix(method="induction", metric="nope")


def test_ablation_ranks_by_size_of_effect_and_matches_the_run(toy):
    res = hm.ablate(toy, task="induction", n=8)
    matrix = res.matrix()
    assert np.allclose(matrix, np.asarray(res.job.matrix, dtype=float), equal_nan=True)
    top = res.top(3)
    order = np.argsort(-np.abs(matrix).ravel(), kind="stable")[:3]
    assert [(int(r.layer), int(r.head)) for r in top.itertuples()] == [divmod(int(i), matrix.shape[1]) for i in order]
    assert res.meaning().by_abs and "ablating the head" in top["says"].iloc[0]


def test_heatmap_is_sign_aligned_with_the_datas_own_range(toy):
    res = hm.ablate(toy, task="induction", n=8)
    fig = res.heatmap()
    z = np.asarray(fig.data[0].z, dtype=float)
    sign = res.meaning().sign
    assert np.allclose(z, sign * res.matrix(), equal_nan=True)
    title = fig.data[0].colorbar.title.text
    assert f"max {np.nanmax(z):.3g}" in title and f"min {np.nanmin(z):.3g}" in title
    hover = fig.data[0].text[int(np.nanargmax(np.abs(z)) // z.shape[1])]
    assert any("rank 1 of" in h for h in hover)


def test_show_attention_is_the_captured_pattern_and_escapes_tokens(toy):
    view = hm.show_attention(toy, "a b a b <script>alert(1)</script>", head="L1H2")
    enc = toy.tokenize(["a b a b <script>alert(1)</script>"])
    rec = run_capture(toy, CaptureSpec(sites={Site.PATTERN}, heads=(HeadId(1, 2),), keep_logits=False), **enc)
    assert np.allclose(view.pattern, rec.head_tensor(Site.PATTERN, HeadId(1, 2))[0].numpy())
    assert view.query == len(view.tokens) - 1  # the final query token by default
    page = view._repr_html_()
    assert "<script" not in page and "<svg" in page
    pos, _tok, weight = view.top_keys(1)[0]
    assert weight == pytest.approx(float(view.pattern[view.query].max())) and pos == int(view.pattern[view.query].argmax())
    with pytest.raises(InputError, match="outside"):
        hm.show_attention(toy, "a b", head="L1H2", query=5)


def test_atlas_view_reads_what_a_result_saved(scanned, tmp_path):
    path = tmp_path / "a.db"
    run_id = scanned.save(str(path))
    atlas = hm.Atlas(path)
    runs = atlas.runs()
    assert runs["id"].tolist() == [run_id] and runs["kind"].iloc[0] == "scan"
    heads = atlas.heads(type="induction")
    assert set(heads["head_id"]) >= {"L1H0", "L1H2"}
    stored = atlas.scores(run=run_id)
    assert len(stored) == len(scanned.to_pandas())
    view = atlas.report(tmp_path / "report")
    assert view.path.is_file() and "srcdoc=" in view._repr_html_()
    with pytest.raises(HeadmineError, match="no atlas file"):
        hm.Atlas(tmp_path / "missing.db")


def test_errors_are_one_short_message(toy):
    with pytest.raises(DetectorError, match="no_such_detector"):
        hm.scan(toy, detectors=["no_such_detector"])
    with pytest.raises(InputError) as info:
        hm.load("toy-induction", dtype="float8")
    text = error_text(info.value)
    assert text == "InputError: unknown dtype 'float8'\nWhat to do: use float32, bfloat16 or float16"
    assert not install_error_display()  # no IPython running here: nothing is installed

    class Shell:  # the part of IPython's shell the handler uses
        def __init__(self) -> None:
            self.published: list[dict] = []
            self.tracebacks = 0

        @property
        def display_pub(self):
            return self

        def publish(self, data):
            self.published.append(data)

        def showtraceback(self, *_args, **_kw):
            self.tracebacks += 1

    shell = Shell()
    _handler(shell, type(info.value), info.value, None)
    assert shell.published and shell.published[0]["text/plain"] == text and shell.tracebacks == 0
    assert "&lt;" in ErrorDisplay(InputError("<b>bad</b>", "fix <it>"))._repr_html_()
    _handler(shell, ValueError, ValueError("other"), None)
    assert shell.tracebacks == 1  # other errors keep the normal traceback
    with pytest.raises(InputError, match="no option"):
        hm.method("ablation", toy, task="induction", bogus=1)


def test_gate_returns_chg_scores(toy):
    res = hm.gate(toy, task="induction", n=8, seeds=1, updates=(2, 2, 2), ablation=False, agreement=False)
    df = res.to_pandas()
    assert {"F", "N", "I"} <= set(df["metric"]) and isinstance(df, pd.DataFrame)
    f = res.matrix(method="chg", metric="F")
    assert np.allclose(f, res.job.result.F.mean(0).numpy(), atol=1e-6)
    assert torch.is_tensor(res.job.result.G)
