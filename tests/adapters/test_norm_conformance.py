"""Adapter conformance for model knowledge beyond module paths: norms, post-norms, unembedding, soft-cap.

Every tiny family (tests.tiny_models.CONFIGS, so a new family is checked automatically) with its
norm gains and biases randomised, so Gemma's ``1 + w`` convention, LayerNorm centring and biases
all matter. Each check compares what the adapter declares with the model's own modules or forward:
- each NormSpec reproduces its module, and the attention-norm spec produces the attention's input;
- post-norms (Gemma 2/3) and plain blocks: declared written contributions rebuild the residual;
- the linearised final norm + unembedding equals the real final norm + unembedding's jacobian-vector
  product (exactly on directions orthogonal to the reference, by a closed form elsewhere);
- factual decoding (decode_direction / final_scale) equals that linearisation;
- circuit weights' gains reproduce the attention norm and final norm + unembedding;
- DLA components sum to the metric; the readout (soft-cap included) reproduces the logits.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jvp  # (torch.func.jvp warns from torch.jit in torch 2.13)

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.direct_logit_attribution import direct_logit_attribution
from headmine.causal.factual_recall.common import decode_direction, final_scale, written_heads
from headmine.causal.metrics import AnswerMetric
from headmine.core.ids import Site
from headmine.detectors.weights import circuit_weights
from headmine.models.loading import LoadedModel
from tests.tiny_models import CONFIGS, VOCAB, tiny_model

NAMES = sorted(CONFIGS)
CAUSAL = [n for n in NAMES if tiny_model(n).adapter.is_causal]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def randomised_norms(name: str) -> LoadedModel:
    """``tiny_model(name)`` with every norm's gain and bias drawn at random (gain mean off 0 and 1)."""
    lm = tiny_model(name)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in lm.model.modules():
            if "norm" not in type(module).__name__.lower():
                continue
            for pname, mean, std in (("weight", 0.3, 0.4), ("bias", 0.0, 0.3)):
                p = getattr(module, pname, None)
                if isinstance(p, torch.Tensor):
                    p.copy_(torch.randn(p.shape, generator=g) * std + mean)
    return lm


@pytest.fixture(scope="module", params=NAMES)
def model(request) -> LoadedModel:
    return randomised_norms(request.param)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 10), generator=g)
    return ids, torch.ones_like(ids)


@pytest.fixture(scope="module")
def record(model, batch):
    sites = {Site.RESID, Site.ATTN_OUT, Site.RESULT} | ({Site.MLP_OUT} if model.adapter.mlp_name else set())
    return run_capture(model, CaptureSpec(sites=frozenset(sites)), *batch)


def off_centre(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2.0 + 0.7  # a mean away from 0, so centring matters


def declared_norms(lm: LoadedModel):
    a = lm.adapter
    yield "final", a.final_norm(), a.final_norm_spec()
    for layer in range(lm.geometry.n_layers):
        yield f"attn{layer}", a.attn_norm(layer), a.attn_norm_spec(layer)
        yield f"attn_post{layer}", a.attn_post_norm(layer), a.attn_post_norm_spec(layer)
        yield f"mlp_post{layer}", a.mlp_post_norm(layer), a.mlp_post_norm_spec(layer)


def test_norm_specs_reproduce_their_modules(model):
    x = off_centre((4, 5, model.geometry.d_model))
    for where, module, spec in declared_norms(model):
        assert (module is None) == (spec is None), where
        if module is None:
            continue
        with torch.no_grad():
            torch.testing.assert_close(spec(x), module(x), **TOL, msg=where)
        # the linearisation is exact at its reference point (up to the bias it leaves out)
        lin = spec.linearised(x)(x) + (0 if spec.bias is None else spec.bias)
        torch.testing.assert_close(lin, module(x), **TOL, msg=where)


def test_attention_reads_the_declared_attention_norm(model, batch, record):
    """The input of the q projection equals attn_norm_spec(layer) of the layer's input residual
    (the residual itself where the adapter declares no norm in front of attention)."""
    a, seen = model.adapter, {}

    def keeper(layer: int):
        def hook(module, args, out) -> None:  # returns None: the output is left as it is
            seen[layer] = args[0]

        return hook

    handles = [a.qkv_hook_points(layer)[Site.Q][0].register_forward_hook(keeper(layer))
               for layer in range(model.geometry.n_layers)]
    try:
        model.forward(*batch)
    finally:
        for h in handles:
            h.remove()
    for layer in range(model.geometry.n_layers):
        spec, resid = a.attn_norm_spec(layer), record.resid[layer]
        want = resid if spec is None else spec(resid)
        torch.testing.assert_close(seen[layer], want, **TOL, msg=f"layer {layer}")


def test_declared_post_norms_rebuild_the_residual(model, record):
    """resid[l+1] - resid[l] = written attention + written MLP (post-norms applied where declared),
    and per-head written contributions sum to the written attention minus its bias."""
    a = model.adapter
    if not a.is_causal or a.mlp_name is None:
        pytest.skip("post-norm encoder or no MLP module to capture")
    for layer in range(model.geometry.n_layers):
        attn_spec, mlp_spec = a.attn_post_norm_spec(layer), a.mlp_post_norm_spec(layer)
        attn, mlp = record.attn_out[layer], record.mlp_out[layer]
        written = (attn if attn_spec is None else attn_spec(attn)) + (mlp if mlp_spec is None else mlp_spec(mlp))
        torch.testing.assert_close(record.resid[layer + 1] - record.resid[layer], written, rtol=1e-4, atol=1e-5)
        heads = written_heads(model, layer, record.result[layer], attn).sum(-2)
        b_o = a.b_O(layer)
        bias_part = 0 if b_o is None else (b_o if attn_spec is None else attn_spec.linearised(attn)(b_o.expand_as(attn)))
        whole = attn if attn_spec is None else attn_spec.linearised(attn)(attn)
        torch.testing.assert_close(heads + bias_part, whole, rtol=1e-4, atol=1e-5)


def readout_jvp(lm: LoadedModel, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """d/dt unembedding(final_norm(x + t v)) at t = 0, through the model's own modules."""
    a = lm.adapter
    norm, unembed = a.final_norm(), a.unembedding()
    return jvp(lambda r: unembed(r if norm is None else norm(r)), x, v)[1]


def test_linearised_final_norm_and_decoding_match_the_jacobian(model, record):
    a = model.adapter
    if not a.is_causal:
        pytest.skip("no unembedding")
    spec, w_u = a.final_norm_spec(), a.W_U().float()
    assert spec is not None
    x = record.resid[model.geometry.n_layers].reshape(-1, model.geometry.d_model)  # reference residuals
    v = off_centre(tuple(x.shape), seed=5)
    lin = spec.linearised(x)
    decoded = decode_direction(model, v) / final_scale(model, x)[:, None]
    torch.testing.assert_close(decoded, lin(v) @ w_u, **TOL)
    # the jacobian moves the scale too: J v = lin(v) - weight * n (n . centre(v)) / (d * scale)
    c = x - x.mean(-1, keepdim=True) if spec.kind == "layer" else x
    cv = v - v.mean(-1, keepdim=True) if spec.kind == "layer" else v
    scale = spec.scale(x)
    n = c / scale
    correction = spec.weight * n * (n * cv).sum(-1, keepdim=True) / (x.shape[-1] * scale)
    torch.testing.assert_close(readout_jvp(model, x, v), (lin(v) - correction) @ w_u, **TOL)
    # on directions orthogonal to the (centred) reference the two agree exactly
    v_perp = v - c * (c * v).sum(-1, keepdim=True) / (c * c).sum(-1, keepdim=True)
    torch.testing.assert_close(readout_jvp(model, x, v_perp), decode_direction(model, v_perp) / final_scale(model, x)[:, None], **TOL)


def test_circuit_weights_gains_reproduce_the_norms(model):
    if not model.adapter.is_causal:
        pytest.skip("circuit weights need an unembedding")
    a, cw = model.adapter, circuit_weights(model)
    x = off_centre((6, model.geometry.d_model), seed=2)
    assert cw.norm_kind == a.final_norm_spec().kind
    for layer in range(model.geometry.n_layers):
        spec, module = a.attn_norm_spec(layer), a.attn_norm(layer)
        want = x if module is None else module(x) - (0 if spec.bias is None else spec.bias)
        torch.testing.assert_close(cw.normalize(x, cw.attn_norm_gain[layer]), want, rtol=1e-4, atol=1e-4)
    final_bias = a.final_norm_spec().bias
    ub = a.unembed_bias()
    want = a.unembedding()(a.final_norm()(x)) - (0 if final_bias is None else final_bias @ a.W_U()) - (0 if ub is None else ub)
    torch.testing.assert_close(cw.normalize(x) @ cw.W_U, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CAUSAL)
def test_dla_components_sum_to_the_metric(name, batch):
    lm = randomised_norms(name)
    ids, mask = batch
    g = torch.Generator().manual_seed(4)
    metric = AnswerMetric(kind="logit_diff", end_pos=mask.sum(1) - 1, target_id=torch.randint(0, VOCAB, (3,), generator=g),
                          wrong_id=torch.randint(0, VOCAB, (3,), generator=g))
    res = direct_logit_attribution(lm, ids, mask, metric)
    torch.testing.assert_close(res.component_sum(), res.total, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CAUSAL)
def test_readout_and_softcap_reproduce_large_logits(name, batch):
    """With the unembedding scaled up so logits are large enough for a soft-cap to matter, the adapter's
    readout (final norm, unembedding, declared soft-cap) of the last residual equals the model's logits."""
    lm = randomised_norms(name)
    a = lm.adapter
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    assert a.final_logit_softcap() == cap, "the adapter must declare the config's final logit soft-cap"
    with torch.no_grad():
        a.unembedding().weight.mul_(300.0)
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.RESID}), layers=(lm.geometry.n_layers,)), *batch)
    assert rec.logits.abs().max() > 10
    torch.testing.assert_close(a.readout(rec.resid[lm.geometry.n_layers]), rec.logits, rtol=1e-4, atol=1e-4)
    if cap:
        res_metric = AnswerMetric(kind="logit", end_pos=batch[1].sum(1) - 1, target_id=torch.arange(3))
        res = direct_logit_attribution(lm, *batch, res_metric)
        torch.testing.assert_close(res.component_sum(), res.total, rtol=1e-4, atol=1e-3)
