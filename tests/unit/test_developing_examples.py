"""docs/DEVELOPING.md's four one-file extensions, followed end to end in this process.

Each example becomes a module of a temporary package (no other file changes): the probe task and the
detector run through `scan_model` with the causal check on `toy-induction`; the causal method runs
through `run_causal` and lands in an atlas; the model family's adapter is picked for a tiny StarCoder2
and passes the wiring checks the conformance suite runs on every family. The registrations are
removed again afterwards (the registries are process-wide).
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, Starcoder2Config

from headmine.apply import APPLICATIONS, HeadArtifact, applied
from headmine.atlas import Atlas, write_job
from headmine.causal import Zero, intervening
from headmine.causal.methods import METHODS
from headmine.core.ids import HeadId
from headmine.core.provenance import ModelProvenance
from headmine.detectors import unregister as unregister_detector
from headmine.models.base import ADAPTERS
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from headmine.pipeline.causal import run_causal
from headmine.pipeline.doctor import run_checks
from headmine.pipeline.scan import ScanConfig, scan_model
from headmine.tasks import PROBES
from tests.doc_examples import NAMES, write_package

PACKAGE = "hm_doc_examples"


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("doc")
    write_package(root, PACKAGE)
    sys.path.insert(0, str(root))
    try:
        yield {name: importlib.import_module(f"{PACKAGE}.{name}") for name in NAMES}
    finally:
        sys.path.remove(str(root))
        PROBES.unregister("short_repeats")
        unregister_detector("self_attention")
        METHODS.unregister("head_scaling")
        ADAPTERS.unregister("starcoder2")
        APPLICATIONS.unregister("silence")
        for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[name]


def test_doc_task_and_detector_scan_and_confirm_on_the_toy(examples, toy, tmp_path):
    result = scan_model(toy, ScanConfig(detectors=("self_attention",), top_k=2, n_random=3, causal_n=4))
    scores = result.matrix("self_attention")
    assert scores.shape == (2, 4) and torch.isfinite(torch.as_tensor(scores)).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert result.top("self_attention", 1).iloc[0][["layer", "head"]].tolist() == [0, 2]  # the toy's A[q, q] ~ 0.97
    check = result.causal["self_attention"]
    assert check.metric == "loss_second_half" and check.k == 2 and len(check.random_effects) == 3
    assert result.inputs["short_repeats"] and len(result.inputs["short_repeats"][0]) == 21  # BOS + 2 x 10
    run_id = write_job(result, tmp_path / "atlas.db")
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        assert set(db.scores(run_id=run_id).method) >= {"self_attention", "causal:self_attention"}
        assert db.head_type_for_detector("self_attention") == ["Diagonal Head"]


def test_doc_method_runs_and_is_stored(examples, toy, tmp_path):
    run = run_causal(toy, examples["method"].HeadScalingConfig(task="induction", n=4, factor=0.0))
    deltas = run.result.head_matrix()
    assert deltas.shape == (2, 4)
    # factor 0 is zero ablation: the induction heads' deltas equal the built-in ablation's exactly
    zero = run_causal(toy, METHODS.get("ablation").config(task="induction", n=4, mode="zero"))
    assert torch.allclose(torch.as_tensor(deltas), torch.as_tensor(zero.result.head_matrix()).float(), atol=1e-5)
    run_id = write_job(run, tmp_path / "atlas.db")
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        assert db.run(run_id).params["config"]["factor"] == 0.0
        assert len(db.scores(run_id=run_id)) == 8


def test_doc_model_family_passes_the_wiring_checks(examples):
    torch.manual_seed(0)
    config = Starcoder2Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                              bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    adapter = adapter_for(model)
    assert type(adapter).__name__ == "Starcoder2Adapter"
    lm = LoadedModel(model=model, adapter=adapter, tokenizer=None, name="tiny-starcoder2",
                     provenance=ModelProvenance(name="tiny-starcoder2", source="test", source_kind="local",
                                                model_type="starcoder2"))
    results = run_checks(lm)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]
    x = torch.randn(3, 32)
    spec = adapter.final_norm_spec()
    assert spec is not None and spec.kind == "layer"
    assert torch.allclose(spec(x), model.model.norm(x), atol=1e-5)


def test_doc_application_saves_loads_and_applies(examples, toy, tmp_path):
    """The example application: its artifact round-trips and, applied, equals the engine's zero ablation."""
    app = APPLICATIONS.get("silence")
    heads = (HeadId(1, 0), HeadId(1, 2))
    app.artifact(toy, heads, factor=0.0).save(tmp_path / "silence")
    art = HeadArtifact.load(tmp_path / "silence.json", kind="silence")
    ids = torch.randint(5, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with applied(toy, art):
        edited = toy.forward(ids)
    with intervening(toy, [Zero(heads=heads)]):
        oracle = toy.forward(ids)
    assert torch.equal(edited, oracle) and not torch.allclose(edited, toy.forward(ids))
