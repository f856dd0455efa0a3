"""A report from a real (tiny, in-process) run: CHG on a random 3-layer model, written by the pipeline."""

from __future__ import annotations

import json

import torch

from headmine.atlas import write_job
from headmine.causal.head_gating import CHGConfig, repeated_tokens_data
from headmine.pipeline.gating import gate_model
from headmine.report import build_report
from tests.tiny_models import VOCAB, tiny_model


def test_report_from_a_real_chg_run(tmp_path):
    torch.set_num_threads(1)
    lm = tiny_model("llama-gqa")
    data = repeated_tokens_data(VOCAB, n=6, length=8, seed=1)
    cfg = CHGConfig.preset_for("quick", updates=(4, 3, 3), seeds=2, batch_size=4, micro_batch=8, eval_rows=4)
    run_id = write_job(gate_model(lm, data, cfg, task="toy-repeat"), tmp_path / "atlas.db")
    files = build_report(tmp_path / "atlas.db", tmp_path / "report")
    html = files.pages["llama-gqa"].read_text(encoding="utf-8")
    page = json.loads(html.split('<script type="application/json" id="hm-data">')[1].split("</script>")[0])
    assert (page["n_layers"], page["n_heads"]) == (3, 4)
    metrics = {s["metric"] for s in page["series"] if s["run"] == run_id}
    assert {"F", "N", "I", "G", "G_plus", "G_minus", "F_max"} <= metrics
    assert all(len(s["z"]) == 3 and len(s["z"][0]) == 4 for s in page["series"])
    assert {c["name"] for c in page["curves"]} >= {"G/nll", "targeted ablation"}
    assert f"run {run_id} · chg · toy-repeat" in html
