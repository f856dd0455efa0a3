"""CPU vs GPU equality, bf16 tolerance and layers spread over several GPUs (issue 12 §4).

These tests run wherever CUDA is present and skip with the reason shown (``pytest -ra``) elsewhere:
CI machines have no GPU. The equality bar is 1e-4 in float32 (the kernels differ, the maths does
not); bfloat16 is held to the documented tolerance of docs/SCALING.md (logits within 3% of their
spread on average, per-head effects correlated above 0.98 with float32).
"""

from __future__ import annotations

import pytest
import torch

from headmine.causal.ablation import ablation_sweep
from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.direct_logit_attribution import direct_logit_attribution
from headmine.causal.engine import run_with_interventions
from headmine.causal.head_gating.logprob import gated_logprob
from headmine.causal.interventions import Gate
from headmine.causal.metrics import AnswerMetric
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel, load_model
from tests.tiny_models import VOCAB, tiny_model

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(N_GPUS == 0, reason="no CUDA GPU here: CPU/GPU equality and multi-GPU tests run where one is present"),
]
FAMILIES = ["llama-gqa", "gemma3-mqa", "gemma2-gqa", "gpt2-mha", "gpt_neox-mha", "opt-mha", "qwen2-gqa"]


def _inputs(b: int = 3, t: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, AnswerMetric]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    corrupted = torch.randint(0, VOCAB, (b, t), generator=g)
    metric = AnswerMetric(kind="logit_diff", end_pos=torch.full((b,), t - 1), target_id=torch.randint(0, VOCAB, (b,), generator=g),
                          wrong_id=torch.randint(0, VOCAB, (b,), generator=g))
    return ids, corrupted, metric


def _on(lm: LoadedModel, device: str) -> LoadedModel:
    lm.model.to(device)
    return lm


def _all_methods(lm: LoadedModel, ids: torch.Tensor, corrupted: torch.Tensor, metric: AnswerMetric) -> dict[str, torch.Tensor]:
    ones = torch.ones_like(ids)
    return {
        "logits": lm.forward(ids).float().cpu(),
        "sweep": ablation_sweep(lm, ids, None, metric, mode="mean").values,
        "attribution": attribution_patching(lm, ids, ones, corrupted, ones, metric).values,
        "dla": direct_logit_attribution(lm, ids, None, metric).heads,
        "gated": run_with_interventions(lm, ids, interventions=[Gate(factors=torch.full(
            (lm.geometry.n_layers, lm.geometry.n_heads), 0.5))]).float().cpu(),
        "chg_logprob": gated_logprob(lm, ids, ones, ones.bool(), torch.rand(
            2, lm.geometry.n_layers, lm.geometry.n_heads, generator=torch.Generator().manual_seed(1))).cpu(),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_float32_equals_cpu(family: str) -> None:
    ids, corrupted, metric = _inputs()
    cpu = _all_methods(tiny_model(family), ids, corrupted, metric)
    gpu = _all_methods(_on(tiny_model(family), "cuda"), ids, corrupted, metric)
    for name, value in cpu.items():
        assert torch.allclose(value, gpu[name], atol=1e-4, rtol=1e-4), (family, name, (value - gpu[name]).abs().max())


def test_gpu_bfloat16_tracks_cpu_float32_on_the_toy() -> None:
    cpu = load_model("toy-induction")
    gpu = load_model("toy-induction", device="cuda", dtype="bfloat16")
    assert gpu.provenance.device == "cuda:0" and gpu.provenance.dtype == "bfloat16"
    half = torch.randint(0, cpu.geometry.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([half, half], 1)
    a, b = cpu.forward(ids), gpu.forward(ids).float().cpu()
    assert float((a - b).abs().mean() / a.std()) < 0.03
    metric = AnswerMetric(kind="answer_logprob", end_pos=torch.full((8,), 30), target_id=ids[:, 15])
    sa = ablation_sweep(cpu, ids, None, metric).deltas.flatten()
    sb = ablation_sweep(gpu, ids, None, metric).deltas.flatten()
    assert torch.corrcoef(torch.stack([sa, sb]))[0, 1] > 0.98


@pytest.mark.skipif(N_GPUS < 2, reason="needs two CUDA GPUs to spread the layers over")
@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-mqa"])
def test_layers_spread_over_two_gpus_give_the_one_device_numbers(family: str) -> None:
    from accelerate import dispatch_model

    ids, corrupted, metric = _inputs()
    cpu = _all_methods(tiny_model(family), ids, corrupted, metric)
    model = tiny_model(family).model
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
                  "model.layers.2": 1, "model.norm": 1, "lm_head": 1}
    if family.startswith("gemma3"):
        device_map["model.rotary_emb_local"] = 0
    model = dispatch_model(model, device_map={k: v for k, v in device_map.items() if _has(model, k)})
    spread = LoadedModel(name=family, model=model, tokenizer=None, adapter=adapter_for(model),
                         provenance=tiny_model(family).provenance)
    assert spread.layer_device(0) != spread.layer_device(2)
    gpu = _all_methods(spread, ids, corrupted, metric)
    for name, value in cpu.items():
        assert torch.allclose(value, gpu[name], atol=1e-4, rtol=1e-4), (family, name)


def _has(model: torch.nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False


def test_mine_runs_on_the_gpu_in_bfloat16(tmp_path) -> None:
    from typer.testing import CliRunner

    from headmine.atlas import Atlas
    from headmine.cli.main import app

    result = CliRunner().invoke(app, ["mine", "toy-induction", "--atlas", str(tmp_path / "a.db"), "--no-report",
                                      "--device", "cuda", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    with Atlas.open(tmp_path / "a.db", readonly=True) as db:
        infos = list(db.runs()["model_info"])
    assert len(infos) >= 5 and all(i["device"] == "cuda:0" and i["dtype"] == "bfloat16" for i in infos)
