"""The ``eap`` method end to end on a tiny GQA Llama: its run in the atlas, the report's edge-circuit
section (curves as inline SVG, everything escaped), and the command's input errors."""

from __future__ import annotations

import math

import numpy as np
import torch
import typer
from typer.testing import CliRunner

from headmine.atlas import Atlas, write_job
from headmine.causal.edge_attribution import EdgeAttributionConfig
from headmine.causal.methods import CausalInputs, get_method
from headmine.causal.metrics import AnswerMetric
from headmine.cli.eap import register
from headmine.pipeline.causal import CausalRun
from headmine.report.build import build_report
from headmine.report.edges import curve_chart
from tests.tiny_models import tiny_model


def _inputs(n: int = 6, t: int = 6) -> CausalInputs:
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 97, (n, t), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, 97, (n,), generator=g)
    mask = torch.ones_like(clean)
    metric = AnswerMetric(kind="logit_diff", end_pos=torch.full((n,), t - 1), target_id=torch.arange(n),
                          wrong_id=torch.arange(n) + 10)
    return CausalInputs(clean_ids=clean, clean_mask=mask, corrupted_ids=corrupted, corrupted_mask=mask, metric=metric,
                        task="toy", task_params={}, clean_texts=[], corrupted_texts=None)


def test_method_run_atlas_and_report(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    method = get_method("eap")
    config = EdgeAttributionConfig(task="toy", n=6, steps=2, edges="3,10,1000", batch_size=2, check_top=3, check_random=3)
    inputs = _inputs()
    result = method.run(lm, config, inputs)
    s = result.summary
    g = lm.geometry
    assert s["graph"]["edges"] == result.graph.n_edges and s["graph"]["n_kv_heads"] == g.n_kv_heads == 2
    assert s["prompts"] == {"scored": 3, "held_out": 3, "tokens": 6}
    assert [p["n"] for p in s["curves"]] == [3, 10, 1000]
    every = s["curves"][-1]  # 1000 > every edge: the whole model
    assert every["kept"] == result.graph.n_edges and math.isclose(every["faithfulness"], 1.0, rel_tol=1e-4)
    assert len(s["check"]["edges"]) == 6 and s["cost"]["multiple"] > 0
    top = s["top_edges"][0]
    assert abs(top["score"]) == np.abs(result.scores.numpy()).max()
    assert result.head_matrix().shape == (g.n_layers, g.n_heads)
    frame = result.frame()
    assert set(frame["component"]) == {"head", "mlp", "embed"} and len(frame) == 1 + g.n_layers * (g.n_heads + 1)
    s["top_edges"][0]["edge"] = "<script>alert(1)</script>"  # what the report must escape
    run = CausalRun(method=method, config=config, model=lm.name, model_info=lm.model_info(), inputs=inputs,
                    result=result, frame=frame, matrix=result.head_matrix(), duration_s=1.0, started_at="2026-01-01T00:00:00")
    path = tmp_path / "a.db"
    run_id = write_job(run, path)
    with Atlas.open(path, readonly=True) as atlas:
        assert atlas.artifact(run_id, "edge_scores").shape == (result.graph.n_senders, result.graph.n_receivers)
    files = build_report(path, tmp_path / "report")
    html = "".join(p.read_text() for p in files.all if p.suffix == ".html")
    assert 'id="edges"' in html and "EAP-IG, 2 steps" in html and "<polyline" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_curve_chart_geometry() -> None:
    pts = [{"n": 10, "faithfulness": 0.2, "completeness": 0.5}, {"n": 1000, "faithfulness": 1.3, "completeness": None}]
    c = curve_chart(pts)
    assert c is not None and c["xticks"][0]["x"] == c["left"] and c["xticks"][-1]["x"] == c["right"]
    assert c["completeness"].count(",") == 1  # the missing value is skipped
    top_y = float(c["faithfulness"].split()[-1].split(",")[1])
    assert top_y == c["top"]  # 1.3 is the highest value: the top of the box
    assert curve_chart([]) is None


def test_cli_input_errors_before_loading() -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A group, so that `eap` is a subcommand as in headmine's app."""

    register(app)
    runner = CliRunner()
    for args, word in ((["--edges", "10,x"], "edges"), (["--steps", "-1"], "steps"), (["--n", "1"], "n >= 2")):
        res = runner.invoke(app, ["eap", "no-such-model", *args])
        assert res.exit_code == 2 and word in res.output, res.output
