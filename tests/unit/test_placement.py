"""Devices and dtypes (issue 12 §1): choices are checked before a load, ``auto`` goes through accelerate,
provenance and the report say where a run computed, and bfloat16 runs keep float32 reductions.

Multi-GPU and CPU-vs-GPU equality live in tests/gpu (they run where CUDA is present).
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from headmine.causal.ablation import ablation_sweep
from headmine.causal.engine import run_with_interventions
from headmine.causal.interventions import Gate
from headmine.causal.metrics import AnswerMetric
from headmine.cli.main import app
from headmine.core.errors import InputError, ModelLoadError
from headmine.models.loading import load_model
from headmine.models.placement import module_device, parse_device, parse_dtype, placement_summary
from tests.tiny_models import tiny_model


def test_device_and_dtype_choices_are_checked() -> None:
    assert parse_device("cpu").device == torch.device("cpu")
    assert parse_device(" AUTO ").is_auto and parse_device("auto").from_pretrained_kwargs() == {"device_map": "auto"}
    assert parse_device("cpu").from_pretrained_kwargs() == {}
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        parse_device("gpu0")
    with pytest.raises(InputError, match="not supported"):
        parse_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no usable CUDA GPU"):
            parse_device("cuda:0")
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    assert parse_dtype(torch.float32) is torch.float32 and parse_dtype("torch.bfloat16") is torch.bfloat16
    with pytest.raises(InputError, match="unknown dtype 'int8'"):
        parse_dtype("int8")
    with pytest.raises(InputError, match="not supported"):
        parse_dtype(torch.int64)


def test_cli_refuses_a_missing_gpu_and_a_bad_dtype_before_loading() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["info", "toy-induction", "--dtype", "int4"])
    assert bad.exit_code == 2 and "unknown dtype 'int4'" in bad.output and "Traceback" not in bad.output
    if not torch.cuda.is_available():
        gpu = runner.invoke(app, ["scan", "toy-induction", "--device", "cuda"])
        assert gpu.exit_code == 2 and "no usable CUDA GPU" in gpu.output and "--device cpu" in gpu.output


def test_auto_placement_loads_through_accelerate_and_matches_one_device() -> None:
    plain = load_model("toy-induction")
    auto = load_model("toy-induction", device="auto")
    assert auto.provenance.device == "auto" and plain.provenance.device == "cpu"
    n_params = sum(p.numel() for p in plain.model.parameters())
    # no GPU here: accelerate's "auto" places every layer on the CPU (transformers keeps no device map then)
    assert auto.provenance.placement is not None and auto.provenance.placement["devices"] == {"cpu": n_params}
    assert plain.provenance.placement == {"devices": {"cpu": n_params}, "device_map": None}
    assert auto.device == torch.device("cpu") and all(auto.layer_device(i) == torch.device("cpu") for i in range(2))
    ids = torch.randint(0, plain.geometry.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.forward(ids), auto.forward(ids))


def test_placement_summary_counts_parameters_per_device() -> None:
    lm = tiny_model("llama-gqa")
    summary = placement_summary(lm.model)
    assert summary["devices"] == {"cpu": sum(p.numel() for p in lm.model.parameters())}
    assert module_device(lm.adapter.layer(1)) == torch.device("cpu")
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


@pytest.fixture(scope="module")
def toy_pair():
    return load_model("toy-induction"), load_model("toy-induction", dtype="bfloat16")


def test_bfloat16_load_records_its_dtype_and_tracks_float32(toy_pair) -> None:
    fp32, bf16 = toy_pair
    assert bf16.dtype is torch.bfloat16 and bf16.provenance.dtype == "bfloat16" and fp32.dtype is torch.float32
    half = torch.randint(0, fp32.geometry.vocab_size, (4, 12), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([half, half], 1)  # repeated tokens: the toy's induction heads predict the second half
    a, b = fp32.forward(ids), bf16.forward(ids)
    assert b.dtype is torch.bfloat16
    # bf16 keeps 8 bits of mantissa: logits track float32 to ~1% of their spread on average (measured 1.1%)
    assert float((a - b.float()).abs().mean() / a.std()) < 0.03
    # ... and the induction predictions are the same tokens (43 of 44 under SDPA: one near-tie flips)
    assert float((a.argmax(-1)[:, 12:-1] == b.float().argmax(-1)[:, 12:-1]).float().mean()) >= 0.95
    assert float((a.argmax(-1)[:, 12:-1] == ids[:, 1:12]).float().mean()) > 0.75  # mostly the right tokens (84%)


def test_bfloat16_all_ones_gates_and_the_fast_sweep_are_exact_within_the_dtype(toy_pair) -> None:
    _, bf16 = toy_pair
    g = bf16.geometry
    ids = torch.randint(0, g.vocab_size, (3, 16), generator=torch.Generator().manual_seed(2))
    plain = bf16.forward(ids)
    gated = run_with_interventions(bf16, ids, interventions=[Gate(factors=torch.ones(g.n_layers, g.n_heads))])
    assert torch.equal(plain, gated)  # a gate of 1 multiplies by exactly 1 in bf16 too

    gen = torch.Generator().manual_seed(3)
    metric = AnswerMetric(kind="logit_diff", end_pos=torch.full((3,), 15), target_id=torch.randint(0, g.vocab_size, (3,), generator=gen),
                          wrong_id=torch.randint(0, g.vocab_size, (3,), generator=gen))
    fast = ablation_sweep(bf16, ids, None, metric, mode="mean", fast=True, max_rows=6)
    naive = ablation_sweep(bf16, ids, None, metric, mode="mean", fast=False)
    assert fast.values.dtype == torch.float32 and fast.baseline.dtype == torch.float32  # float32 reductions
    # stacked variants round differently from one-at-a-time runs in bf16: equal to a bf16 ulp of the logits
    spread = float(naive.deltas.abs().max())
    assert spread > 0.05 and float((fast.values - naive.values).abs().max()) < 0.05 * max(1.0, float(naive.baseline.abs().max()))


def test_a_bfloat16_mine_session_never_resumes_a_float32_one(toy_pair) -> None:
    from headmine.pipeline.mine import BUDGETS, group_id_for

    fp32, bf16 = toy_pair
    quick = BUDGETS["quick"]
    assert group_id_for(fp32, quick) != group_id_for(bf16, quick)
    assert group_id_for(fp32, quick) == group_id_for(load_model("toy-induction", device="auto"), quick)  # same numbers
