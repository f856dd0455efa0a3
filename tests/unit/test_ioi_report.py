"""The ioi_circuit job's atlas run and the report's IOI section: roles become labels and an artifact, the
drawing is an inline SVG with every atlas string escaped, and the page shows it."""

from __future__ import annotations

import numpy as np

from headmine.atlas import Atlas, write_job
from headmine.causal.ioi_roles import IOIRoles, IOIRolesConfig
from headmine.core.ids import HeadId
from headmine.pipeline.ioi_circuit import ARTIFACT, IOICircuitResult
from headmine.report import build_report
from headmine.report.ioi_circuit import circuit_svg

EVIL = '<script>alert("x")</script>'


def _result(model: str = "tiny-ioi") -> IOICircuitResult:
    rng = np.random.default_rng(0)
    ev = {k: rng.normal(size=(4, 3)) * 0.01 for k in ("direct_path", "pp_nm_q", "pp_sinh_v", "pp_ind_k",
                                                       "backup_compensation", "dla", "attn_END->IO")}
    ev["direct_path"][3, 1] = -0.4
    ev["pp_nm_q"][2, 0] = -0.2
    ev["pp_sinh_v"][1, 2] = -0.1
    roles = {r: [] for r in ("name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition", "induction",
                             "duplicate_token", "previous_token")}
    roles.update(name_mover=[HeadId(3, 1)], s_inhibition=[HeadId(2, 0)], induction=[HeadId(1, 2)])
    res = IOIRoles(model=model, n_layers=4, n_heads=3, config=IOIRolesConfig(), roles=roles, direct_effect=[HeadId(3, 1)],
                   evidence=ev, thresholds={"direct": 0.05, "s_inhibition": 0.03, "s_inh_values": 0.02, "dla": 0.04},
                   vs_random={"name_mover": {"n_heads": 1, "delta_ld": -1.2, "delta_ld_ci": [-1.5, -0.9],
                                             "random_mean": -0.05, "random_q95_abs": 0.2,
                                             "share_random_as_large": 0.0, "beats_random": True}},
                   faithfulness={"n_prompts": 8, "n_circuit_heads": 3, "faithfulness": 0.8, "faithfulness_ci": [0.6, 1.0],
                                 "empty_faithfulness": 0.1, "random_circuits": {"n": 2, "mean": 0.2, "max": 0.3, "values": [0.1, 0.3]},
                                 "completeness": [{"role": "name_mover", "n_heads": 1, "F_C_minus_K": 0.5,
                                                   "F_M_minus_K": 1.0, "gap": -0.5, "gap_ci": [-0.7, -0.3]}]},
                   ld_fit=2.0, ld_heldout=2.1, notes=[EVIL])
    return IOICircuitResult(model=model, model_info={"geometry": {"n_layers": 4, "n_heads": 3}}, result=res)


def test_job_writes_labels_scores_and_the_artifact(tmp_path):
    path = tmp_path / "a.db"
    run_id = write_job(_result(), path)
    with Atlas.open(path) as db:
        labels = db.labels(model="tiny-ioi")
        assert {(r.layer, r.head, r.head_type) for r in labels.itertuples()} >= {
            (3, 1, "Name Mover Head"), (2, 0, "S-Inhibition Head"), (1, 2, "Induction Head"), (3, 1, "Direct-Effect Head")}
        art = db.artifact(run_id, ARTIFACT)
        assert {"from": "L2H0", "to": "L3H1", "input": "q"}.items() <= art["edges"][0].items()
        assert any(e["to"] == "logits" for e in art["edges"])
        assert len(db.scores(model="tiny-ioi")) == 7 * 12


def test_svg_escapes_atlas_strings():
    s = _result().summary
    s["model"] = EVIL
    s["roles"]["name_mover"] = [EVIL, "L3H1"]
    svg = str(circuit_svg(s))
    assert svg.startswith("<svg") and "<script" not in svg and "&lt;script&gt;" in svg
    assert "style=" not in svg and "href" not in svg


def test_report_draws_the_circuit(tmp_path):
    path = tmp_path / "a.db"
    write_job(_result(), path)
    files = build_report(path, tmp_path / "out")
    page = files.pages["tiny-ioi"].read_text(encoding="utf-8")
    assert 'id="ioi"' in page and 'class="ioi-circuit"' in page and "L3H1" in page
    assert EVIL not in page and "&lt;script&gt;alert" in page  # the note is escaped
