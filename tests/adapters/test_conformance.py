"""Adapter conformance: every registered family, MHA/GQA/MQA, tiny random weights, exact invariants."""

from __future__ import annotations

import pytest
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal import Gate, Zero, intervening
from headmine.core.errors import HeadIndexError, UnsupportedModelError
from headmine.core.ids import HeadId, Site
from headmine.models.families import adapter_for, supported_families
from headmine.pipeline import doctor
from tests.tiny_models import CONFIGS, VOCAB, tiny_model

NAMES = sorted(CONFIGS)


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 10), generator=g)
    return ids, torch.ones_like(ids)


def test_every_registered_family_has_a_tiny_config():
    covered = {CONFIGS[n]().model_type for n in NAMES}
    families = {"llama", "mistral", "qwen2", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "opt", "bert"}
    assert families <= covered
    assert families <= set(supported_families())


@pytest.mark.parametrize(
    "check",
    [doctor.check_gate_identity, doctor.check_hooks_removed, doctor.check_zero_equals_weight_surgery,
     doctor.check_results_sum, doctor.check_patterns, doctor.check_gqa_mapping],
    ids=lambda c: c.__name__,
)
def test_doctor_checks(model, batch, check):
    result = check(model, *batch)
    assert result.passed, f"{model.name}: {result.name} -> {result.value} ({result.detail})"


def test_gate_identity_is_bitwise(model, batch):
    ids, mask = batch
    plain = model.forward(ids, mask)
    g = model.geometry
    with torch.no_grad(), intervening(model, [Gate(factors=torch.ones(g.n_layers, g.n_heads))]):
        gated = model.model(input_ids=ids, attention_mask=mask)
    gated = gated.logits if hasattr(gated, "logits") else gated.last_hidden_state
    assert torch.equal(plain, gated)


def test_hooks_removed_after_exception_inside_capture(model, batch):
    from headmine.capture import capturing
    from headmine.capture.hooks import count_hooks

    before = count_hooks(model.model)
    with pytest.raises(RuntimeError, match="boom"):
        with capturing(model, CaptureSpec(sites={Site.PATTERN, Site.Z, Site.RESID}), *batch):
            raise RuntimeError("boom")
    assert count_hooks(model.model) == before


def test_gqa_mapping_matches_repeat_kv(model):
    g = model.geometry
    groups = g.n_heads // g.n_kv_heads
    assert [g.kv_head_of(h) for h in range(g.n_heads)] == [h // groups for h in range(g.n_heads)]
    w_k = model.adapter.W_K(0)
    assert w_k.shape == (g.n_kv_heads, g.d_model, g.d_head)
    assert model.adapter.W_Q(0).shape == (g.n_heads, g.d_model, g.d_head)
    assert model.adapter.W_O(0).shape == (g.n_heads, g.d_head, g.d_model)


def test_qkv_capture_matches_weight_slices(model, batch):
    """q from hooks equals resid_pre-normalised input times the adapter's W_Q slice (checked via the q module input)."""
    rec = run_capture(model, CaptureSpec(sites={Site.Q, Site.K, Site.V}, layers=(1,)), *batch)
    g = model.geometry
    assert rec.q[1].shape == (3, 10, g.n_heads, g.d_head)
    assert rec.k[1].shape == (3, 10, g.n_kv_heads, g.d_head)


def test_selection_by_head_and_query_position(model, batch):
    heads = (HeadId(1, 2), HeadId(2, 0))
    full = run_capture(model, CaptureSpec(sites={Site.PATTERN, Site.Z}), *batch)
    sel = run_capture(model, CaptureSpec(sites={Site.PATTERN, Site.Z}, heads=heads, query_positions=(4, 9)), *batch)
    assert sorted(sel.pattern) == [1, 2]
    assert torch.equal(sel.pattern[1][:, 0], full.pattern[1][:, 2, [4, 9]])
    assert torch.equal(sel.z[2][:, :, 0], full.z[2][:, [4, 9], 0])
    last = run_capture(model, CaptureSpec(sites={Site.Z}, heads=heads, query_positions="last"), *batch)
    assert torch.equal(last.z[1][:, 0, 0], full.z[1][:, 9, 2])


def test_out_of_range_head_is_a_clear_error(model, batch):
    g = model.geometry
    with pytest.raises(HeadIndexError, match="out of range"):
        run_capture(model, CaptureSpec(sites={Site.Z}, heads=(HeadId(g.n_layers, 0),)), *batch)
    with pytest.raises(HeadIndexError, match=r"heads 0\.\."):
        with intervening(model, [Zero(heads=(HeadId(0, g.n_heads),))]):
            pass


def test_unknown_family_names_supported_ones():
    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(UnsupportedModelError, match=r"mamba.*supported: .*llama") as err:
        adapter_for(Fake())
    assert "add one" in str(err.value)


def test_unembedding_and_final_norm_paths_resolve(model, batch):
    """W_U, the final norm and the embedding reproduce the model's own logits from the last residual."""
    a, g = model.adapter, model.geometry
    assert a.W_E().shape == (VOCAB, g.d_model)
    if not a.is_causal:
        assert a.unembedding() is None
        return
    assert a.W_U().shape == (g.d_model, VOCAB)
    rec = run_capture(model, CaptureSpec(sites={Site.RESID}, layers=(g.n_layers,)), *batch)
    torch.testing.assert_close(a.readout(rec.resid[g.n_layers]), rec.logits, rtol=1e-4, atol=1e-4)
    # norms, post-norms, decoding and soft-capping: tests/adapters/test_norm_conformance.py


def test_qkv_weight_slices_reproduce_the_projections(model, batch):
    """x @ W_Q[h] (and W_K, W_V per KV head), read with a raw hook on the projection module, equals
    the model's own projection output for that head (bias removed): checks Conv1D and fused layouts."""
    a, g = model.adapter, model.geometry
    seen = {}
    points = a.qkv_hook_points(1)

    def keeper(site):
        def hook(module, args, out):
            seen.setdefault(site, (args[0], out))  # returns None: the output is left as it is

        return hook

    handles = [module.register_forward_hook(keeper(site)) for site, (module, _) in points.items()]
    try:
        model.forward(*batch)
    finally:
        for h in handles:
            h.remove()
    for site, weight, n in ((Site.Q, a.W_Q(1), g.n_heads), (Site.K, a.W_K(1), g.n_kv_heads), (Site.V, a.W_V(1), g.n_kv_heads)):
        x, out = seen[site]
        per_head = points[site][1](out)  # [batch, pos, n, d_head]
        bias_free = per_head - points[site][1](points[site][0](torch.zeros_like(x)))
        for h in range(n):
            torch.testing.assert_close(x @ weight[h], bias_free[..., h, :], rtol=1e-4, atol=1e-5)
