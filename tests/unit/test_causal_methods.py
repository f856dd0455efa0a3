"""The causal-method registry: a new method is one file (here: this test module), and the pipeline
runs and writes it without naming it; the built-in methods declare what they need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from headmine.atlas import Atlas, write_job
from headmine.causal.engine import run_with_interventions
from headmine.causal.interventions import Scale
from headmine.causal.methods import (
    METHODS,
    CausalInputs,
    CausalMethod,
    MethodConfig,
    MethodResult,
    get_method,
    method_for,
    register_method,
)
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.core.tables import head_matrix_frame
from headmine.models.loading import LoadedModel
from headmine.pipeline.causal import prepare_inputs, run_causal


# --------------------------------------------------------------------------- a new method, in one file
@dataclass(frozen=True, kw_only=True)
class HeadScalingConfig(MethodConfig):
    """Scale each head's output by ``factor`` in turn."""

    factor: float = 0.5


@dataclass(frozen=True, kw_only=True)
class HeadScalingResult:
    """Mean change of the metric per head [L, H] and the unscaled metric per prompt [B]."""

    metric: str
    deltas: torch.Tensor
    baseline: torch.Tensor

    def frame(self) -> pd.DataFrame:
        return head_matrix_frame(self.deltas, method="head_scaling", metric=f"delta_{self.metric}",
                                 n=int(self.baseline.shape[0]))

    def head_matrix(self) -> np.ndarray:
        return self.deltas.numpy()

    def artifacts(self) -> dict[str, np.ndarray]:
        return {"baseline": self.baseline.numpy()}


class HeadScaling(CausalMethod[HeadScalingConfig]):
    name = "test_head_scaling"
    run_kind = "head_scaling"
    config_cls = HeadScalingConfig

    def run(self, lm: LoadedModel, config: HeadScalingConfig, inputs: CausalInputs) -> HeadScalingResult:
        ids, mask, metric = inputs.clean_ids, inputs.clean_mask, inputs.metric
        baseline = metric(run_with_interventions(lm, ids, mask)).cpu()
        g = lm.geometry
        deltas = torch.empty(g.n_layers, g.n_heads)
        for h in g.heads():
            scaled = metric(run_with_interventions(lm, ids, mask, [Scale(heads=(h,), factor=config.factor)])).cpu()
            deltas[h.layer, h.head] = (scaled - baseline).mean()
        return HeadScalingResult(metric=metric.kind, deltas=deltas, baseline=baseline)


register_method(HeadScaling())


# --------------------------------------------------------------------------- tests
def test_a_method_defined_in_one_file_runs_and_lands_in_the_atlas(toy, tmp_path):
    config = HeadScalingConfig(task="induction", n=4, factor=0.0)
    run = run_causal(toy, config)  # found from the config's type
    assert run.method.name == "test_head_scaling"
    assert isinstance(run.result, MethodResult)
    g = toy.geometry
    assert run.matrix is not None and run.matrix.shape == (g.n_layers, g.n_heads)
    atlas = tmp_path / "atlas.db"
    run_id = write_job(run, str(atlas), group_id="session")
    with Atlas.open(atlas) as db:
        rec = db.run(run_id)
        assert rec.kind == "head_scaling" and rec.group_id == "session"
        assert rec.params["config"] == {"method": "test_head_scaling", **config.to_dict()}
        scores = db.scores(run_id=run_id)
        assert len(scores) == g.n_layers * g.n_heads and set(scores["method"]) == {"head_scaling"}
        assert set(db.artifact_names(run_id)) == {"baseline", "head_matrix"}
        np.testing.assert_allclose(db.artifact(run_id, "head_matrix"), run.matrix, rtol=1e-6)
        assert [r.role for r in db.inputs(run_id)] == ["clean"] * 4
    # zeroing an induction head hurts the induction answer more than any previous-token head does
    assert float(run.matrix[1].min()) < 0


def test_the_method_is_found_by_name_too(toy):
    run = run_causal(toy, HeadScalingConfig(task="induction", n=2), method="test_head_scaling")
    assert run.method is get_method("test_head_scaling")
    with pytest.raises(InputError, match="takes a PatchingConfig"):
        run_causal(toy, HeadScalingConfig(task="induction", n=2), method="patching")


def test_builtin_methods_are_registered_with_their_own_configs():
    assert {"ablation", "patching", "path_patching", "attribution", "dla", "logit_lens"} <= set(METHODS.names())
    configs = [m.config_cls for _, m in METHODS.items()]
    assert len(set(configs)) == len(configs)
    for _, m in METHODS.items():
        assert method_for(m.config(task="ioi")) is m
    assert get_method("path_patching").run_kind == "patching"


def test_unknown_method_and_duplicate_names_are_refused():
    with pytest.raises(InputError, match="unknown causal method"):
        get_method("no_such_method")
    with pytest.raises(ValueError, match="already registered"):
        register_method(HeadScaling())
    with pytest.raises(InputError):
        method_for(MethodConfig(task="ioi"))  # the base config belongs to no method


@pytest.mark.parametrize("method,options", [
    ("ablation", {"mode": "median"}),
    ("ablation", {"reference": "other"}),
    ("patching", {"direction": "sideways"}),
    ("path_patching", {"receivers": "L1X2"}),
    ("path_patching", {"receiver_input": "qx"}),
    ("attribution", {"ig_steps": -1}),
    ("dla", {"n": 0}),
])
def test_configs_reject_bad_options_before_any_model_loads(method, options):
    with pytest.raises(InputError):
        get_method(method).config(task="ioi", **options)


def test_methods_declare_the_inputs_and_metric_they_need(toy):
    ablation = get_method("ablation")
    assert not ablation.needs_corrupted(ablation.config(task="ioi"))
    assert ablation.needs_corrupted(ablation.config(task="ioi", reference="corrupted"))
    assert not ablation.paired_lengths(ablation.config(task="ioi", mode="mean"))
    assert get_method("patching").needs_corrupted(get_method("patching").config(task="ioi"))
    dla = get_method("dla")
    assert dla.metric_kind("answer_logprob") == "logit" and dla.metric_kind("logit_diff") == "logit_diff"
    inp = prepare_inputs(toy, dla, dla.config(task="induction", n=3, metric="prob"))
    assert inp.metric.kind == "logit" and inp.corrupted_ids is None
    with pytest.raises(InputError, match="needs corrupted prompts"):
        inp.corrupted("patching")


def test_path_patching_receivers_parse_as_head_lists():
    config = get_method("path_patching").config(task="ioi", receivers="L1H2, L1H3")
    assert config.receiver_heads() == [HeadId(1, 2), HeadId(1, 3)]
    assert get_method("path_patching").config(task="ioi").receiver_heads() == "logits"


def test_head_id_parse_list():
    assert HeadId.parse_list("L1H2,l3h4, 5.6") == [HeadId(1, 2), HeadId(3, 4), HeadId(5, 6)]
    assert HeadId.parse_list("") == [] and HeadId.parse_list("L0H1,") == [HeadId(0, 1)]
    with pytest.raises(InputError, match="L9"):
        HeadId.parse_list("L0H1,L9")
