"""The ioi_circuit job's atlas run and the report's IOI section: roles become labels and an artifact, the
drawing is an inline SVG with every atlas string escaped, and the page shows it."""

from __future__ import annotations

import numpy as np
import torch

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


def _tiny_ioi_model(tok):
    """A tiny random Llama with SmolLM2's tokenizer and one planted head (layer 1, head 0) that attends
    uniformly and writes *against* every name it reads: S appears twice, IO once, so the logit
    difference IO - S is positive, so the class tests run (the planted head is too weak to pass them)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from headmine.core.provenance import ModelProvenance
    from headmine.models.families import adapter_for
    from headmine.models.loading import LoadedModel
    from headmine.tasks.ioi import ioi_names

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=64, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    names = torch.tensor([tok.encode(" " + n, add_special_tokens=False)[0] for n in ioi_names(tok)][:64])
    m = model.model
    attn = m.layers[1].self_attn
    e = torch.nn.functional.normalize(m.embed_tokens.weight[names] * m.layers[1].input_layernorm.weight, dim=-1)
    w_u = model.lm_head.weight[names] * m.norm.weight
    with torch.no_grad():
        for p in model.parameters():
            p.requires_grad_(False)
        attn.q_proj.weight[:64] = 0
        attn.v_proj.weight[:64] = 0
        attn.v_proj.weight[:len(names)] = e * 10
        attn.o_proj.weight[:, :64] = 0
        attn.o_proj.weight[:, :len(names)] = -30 * (w_u / w_u.norm(dim=-1, keepdim=True)).T
    prov = ModelProvenance(name="tiny-ioi", source="in-process", source_kind="random", model_type="llama")
    return LoadedModel(name="tiny-ioi", model=model, tokenizer=tok, adapter=adapter_for(model), provenance=prov)


def test_cli_end_to_end_on_a_tiny_model_and_bad_input(smollm2, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from headmine.cli import ioi as cli_ioi

    lm = _tiny_ioi_model(smollm2.tokenizer)
    monkeypatch.setattr(cli_ioi, "load_with_status", lambda *a, **k: lm)
    app = typer.Typer()
    cli_ioi.register(app)
    res = CliRunner().invoke(app, ["tiny", "--n-fit", "8", "--n-heldout", "8", "--random-draws", "3",
                                   "--atlas", str(tmp_path / "a.db")])
    assert res.exit_code == 0, res.output
    # the planted head has the direct effect but not the END->IO attention: no name mover, said so
    # too weak a model for the class tests beyond the first: said so, the run is still stored
    assert "none found" in res.output and "no name movers passed their test" in res.output
    assert "faithfulness" in res.output
    with Atlas.open(tmp_path / "a.db") as atlas:
        assert list(atlas.runs(kind="ioi_circuit")["kind"]) == ["ioi_circuit"]
    for args, text in ((["tiny", "--n-fit", "1"], "n_fit must be at least 2"),
                       (["tiny", "--floor", "2"], "floor must lie in")):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code != 0 and text in bad.output and "Traceback" not in bad.output
