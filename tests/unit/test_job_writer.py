"""One atlas writer: every pipeline job result is a JobResult written by ``atlas.write_job``, and every
run it writes carries the model's provenance with its geometry (``LoadedModel.model_info()``)."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

import headmine.pipeline
from headmine.apply import ApplyResult
from headmine.atlas import Atlas, AtlasRun, JobResult, RunRecord, ScoreRow, score_rows, write_job
from headmine.causal.contrastive_gating import ContrastConfig, split_pair_rows
from headmine.causal.head_gating import CHGConfig, repeated_tokens_data
from headmine.causal.ioi_roles import ROLE_TYPES, IOIRoles, IOIRolesConfig
from headmine.causal.methods import get_method
from headmine.core.errors import AtlasError
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel
from headmine.pipeline.causal import CausalRun, run_causal
from headmine.pipeline.factual import FactualConfig, FactualReport
from headmine.pipeline.gating import ContrastReport, GateReport, contrast_model, gate_model
from headmine.pipeline.ioi_circuit import IOICircuitResult
from headmine.pipeline.scan import ScanConfig, ScanResult, scan_model
from tests.tiny_models import tiny_model

torch.set_num_threads(1)


def _all_subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def job_result_types() -> set[type]:
    """Every JobResult subclass defined in headmine, after importing every pipeline module."""
    for info in pkgutil.iter_modules(headmine.pipeline.__path__, "headmine.pipeline."):
        importlib.import_module(info.name)
    return {c for c in _all_subclasses(JobResult) if c.__module__.startswith("headmine.")}


def _scan(lm: LoadedModel) -> JobResult:
    cfg = ScanConfig(detectors=("induction",), causal=False, batch_size=2,
                     probe_params={"repeated_tokens": {"n": 2, "seq_len": 8}})
    return scan_model(lm, cfg)


def _causal(lm: LoadedModel) -> JobResult:
    return run_causal(lm, get_method("dla").config(task="induction", n=2))


def _gate(lm: LoadedModel) -> JobResult:
    data = repeated_tokens_data(lm.geometry.vocab_size, n=4, length=6, seed=1, low=4)
    cfg = CHGConfig.preset_for("quick", updates=(2, 1, 1), seeds=1, batch_size=2, micro_batch=4, eval_rows=2)
    return gate_model(lm, data, cfg, task="toy-repeat")


def _contrast(lm: LoadedModel) -> JobResult:
    retain = repeated_tokens_data(lm.geometry.vocab_size, n=4, length=6, seed=1, low=4)
    forget = repeated_tokens_data(lm.geometry.vocab_size, n=4, length=6, seed=2, low=4)
    return contrast_model(lm, split_pair_rows(retain, forget), ContrastConfig.preset_for("quick", updates=2, batch_size=2))


def _factual(lm: LoadedModel) -> JobResult:
    # run_factual needs a tokenizer with the factual relations (tests/integration/test_factual.py writes a
    # real one); here the report is built the way run_factual builds it.
    report = FactualReport(model=lm.name, config=FactualConfig(), model_info=lm.model_info())
    report.scores = [ScoreRow(layer=0, method="factual_trajectory", metric="prob", value=0.5, component="layer")]
    return report


def _ioi(lm: LoadedModel) -> JobResult:
    # ioi_roles needs a tokenizer with single-token names (tests/unit/test_ioi_roles.py runs it on a tiny
    # Llama with SmolLM2's tokenizer); here the result is built the way run_ioi_circuit builds it.
    g = lm.geometry
    evidence = {"direct_path": np.zeros((g.n_layers, g.n_heads)), "pp_nm_q": np.zeros((g.n_layers, g.n_heads))}
    evidence["direct_path"][1, 0] = -0.4
    roles = {r: [] for r in ROLE_TYPES}
    roles["name_mover"] = [HeadId(1, 0)]
    res = IOIRoles(model=lm.name, n_layers=g.n_layers, n_heads=g.n_heads, config=IOIRolesConfig(), roles=roles,
                   direct_effect=[], evidence=evidence, thresholds={"direct": 0.05}, vs_random={}, faithfulness={},
                   ld_fit=1.0, ld_heldout=1.0, notes=[])
    return IOICircuitResult(model=lm.name, model_info=lm.model_info(), result=res)


#: How to produce each job result type on a small model (a new JobResult type needs an entry here).
def _apply(lm: LoadedModel) -> JobResult:
    scores = _scan(lm).detector_scores("induction")  # a real per-head table, as an application ranks heads by
    return ApplyResult(kind="steer", title="t", paper="p", model=lm.name, model_info=lm.model_info(),
                       config={"seed": 0}, head_scores=scores)


PRODUCERS: dict[type, Callable[[LoadedModel], JobResult]] = {
    ScanResult: _scan,
    CausalRun: _causal,
    GateReport: _gate,
    ContrastReport: _contrast,
    FactualReport: _factual,
    ApplyResult: _apply,
    IOICircuitResult: _ioi,
}


def test_every_job_result_type_has_a_producer_here():
    assert job_result_types() == set(PRODUCERS)


@pytest.mark.parametrize("kind", sorted(PRODUCERS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_each_job_result_goes_through_write_job_with_geometry(kind, toy, tmp_path):
    result = PRODUCERS[kind](toy)
    assert isinstance(result, kind)
    path = tmp_path / "atlas.db"
    run_id = write_job(result, path, group_id="g1")
    g = toy.geometry
    with Atlas.open(path, readonly=True) as db:
        run = db.run(run_id)
        assert run.group_id == "g1"
        assert run.model == toy.name
        info = dict(run.model_info)
        if kind.__name__ == "ScanResult":  # a scan also says how its patterns were made
            assert info.pop("pattern_source") in ("eager", "recomputed from q,k (sdpa forward)")
        assert info == json.loads(json.dumps(toy.model_info()))
        assert run.model_info["geometry"] == {"n_layers": g.n_layers, "n_heads": g.n_heads,
                                              "n_kv_heads": g.n_kv_heads, "d_head": g.d_head, "d_model": g.d_model}
        assert run.model_info["file_hash"] == toy.provenance.file_hash
        assert len(db.scores(run_id=run_id)) > 0


def test_model_info_is_provenance_plus_geometry():
    lm = tiny_model("llama-gqa")
    info = lm.model_info()
    assert {k: v for k, v in info.items() if k != "geometry"} == lm.provenance.to_dict()
    assert info["geometry"] == {"n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "d_head": 8, "d_model": 32}


def _frame(**over) -> pd.DataFrame:
    row = {"component": "head", "layer": 0, "head": 1, "method": "m", "metric": "score", "value": 0.5, "n": 3,
           "stderr": 0.1}
    return pd.DataFrame([row, {**row, "head": 2, "value": np.nan, "stderr": np.nan}, {**row, "head": 3, **over}])


def test_score_rows_nan_handling_in_one_place():
    kept = list(score_rows(_frame(stderr=np.nan), skip_nan_values=False))
    assert [r.head for r in kept] == [1, 2, 3]
    assert np.isnan(kept[1].value) and kept[1].stderr is None and kept[2].stderr is None
    skipped = list(score_rows(_frame(), skip_nan_values=True))
    assert [r.head for r in skipped] == [1, 3] and skipped[0].stderr == 0.1
    with pytest.raises(ValueError, match="missing"):
        list(score_rows(_frame().drop(columns=["metric"]), skip_nan_values=False))


def test_write_job_takes_a_ready_run_and_a_table(tmp_path):
    run = AtlasRun(record=RunRecord(kind="custom", model="m"), scores=_frame(), artifacts={"a": np.ones(2)})
    run_id = write_job(run, tmp_path / "atlas.db", group_id="g2")
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        assert db.run(run_id).group_id == "g2"
        scores = db.scores(run_id=run_id)
        assert len(scores) == 3 and scores["value"].isna().sum() == 1  # a table keeps NaN values (stored NULL)
        assert db.artifact(run_id, "a").tolist() == [1.0, 1.0]


def test_write_job_failures_are_atlas_errors_naming_kind_and_path(tmp_path):
    bad = AtlasRun(record=RunRecord(kind="custom", model="m"), scores=[ScoreRow(layer=0, head=0, method="m", value=1.0)],
                   artifacts={"bad": object()})
    with pytest.raises(AtlasError, match="artifact 'bad'"):  # the atlas's own errors pass unchanged
        write_job(bad, tmp_path / "atlas.db")
    with pytest.raises(AtlasError, match=r"could not write the custom run to .*atlas\.db"):
        write_job(AtlasRun(record=RunRecord(kind="custom", model="m"), scores=[1]), tmp_path / "atlas.db")  # type: ignore[list-item]
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        assert len(db.runs()) == 0  # one transaction: nothing half-written
    with pytest.raises(AtlasError, match="folder"):
        write_job(AtlasRun(record=RunRecord(kind="custom", model="m")), tmp_path)
