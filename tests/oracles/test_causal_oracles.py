"""Causal methods against reference computations written with raw torch hooks (no headmine capture/engine).

Tiny random Llama (GQA) and GPT-2 models; heads sampled; everything on CPU.
"""

from __future__ import annotations

import pytest
import torch

from headmine.causal.ablation import ablation_sweep
from headmine.causal.activation_patching import activation_patching
from headmine.causal.attribution_patching import attribution_patching
from headmine.causal.direct_logit_attribution import direct_logit_attribution
from headmine.causal.logit_lens import logit_lens
from headmine.causal.metrics import AnswerMetric
from headmine.causal.path_patching import path_patching
from headmine.core.ids import HeadId
from tests.tiny_models import VOCAB, tiny_model

torch.set_num_threads(1)
ATOL = 1e-4


def o_proj(model, layer):
    if hasattr(model, "transformer"):
        return model.transformer.h[layer].attn.c_proj
    return model.model.layers[layer].self_attn.o_proj


def n_heads(model):
    return model.config.num_attention_heads


def raw_z(model, ids, mask):
    """z of every layer [B, T, H, d] via raw pre-hooks on the output projection."""
    store, handles = {}, []
    L, H = model.config.num_hidden_layers, n_heads(model)
    for layer in range(L):
        def fn(mod, args, layer=layer):
            store[layer] = args[0].detach().unflatten(-1, (H, -1)).clone()
        handles.append(o_proj(model, layer).register_forward_pre_hook(fn))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()
    return store, logits


def run_replacing(model, ids, mask, replace):
    """replace: {layer: fn(z [B,T,H,d]) -> z}; raw pre-hooks; returns logits."""
    handles = []
    H = n_heads(model)
    for layer, f in replace.items():
        def fn(mod, args, f=f):
            z = args[0].unflatten(-1, (H, -1)).clone()
            return (f(z).flatten(-2),)
        handles.append(o_proj(model, layer).register_forward_pre_hook(fn))
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()


def metric_of(logits, end, tgt, wrong):
    x = logits[torch.arange(len(end)), end]
    return x[torch.arange(len(end)), tgt] - x[torch.arange(len(end)), wrong]


def setup(family, seed=0, b=4, t=8):
    lm = tiny_model(family, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    corr = ids.clone()
    corr[:, 2] = torch.randint(0, VOCAB, (b,), generator=g)
    corr[:, 4] = torch.randint(0, VOCAB, (b,), generator=g)
    mask = torch.ones_like(ids)
    end = mask.sum(1) - 1
    tgt = torch.randint(0, VOCAB, (b,), generator=g)
    wrong = torch.randint(0, VOCAB, (b,), generator=g)
    metric = AnswerMetric(kind="logit_diff", end_pos=end, target_id=tgt, wrong_id=wrong)
    return lm, ids, corr, mask, metric, (end, tgt, wrong)


SAMPLED = [(0, 1), (1, 3), (2, 0), (2, 2)]


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-mha"])
def test_zero_and_mean_ablation_match_oracle(family):
    lm, ids, _, mask, metric, (end, tgt, wrong) = setup(family)
    zero = ablation_sweep(lm, ids, mask, metric, mode="zero")
    mean = ablation_sweep(lm, ids, mask, metric, mode="mean")
    z, _ = raw_z(lm.model, ids, mask)
    for layer, head in SAMPLED:
        def zero_fn(zz, head=head):
            zz[:, :, head] = 0
            return zz
        want = metric_of(run_replacing(lm.model, ids, mask, {layer: zero_fn}), end, tgt, wrong)
        assert torch.allclose(zero.values[layer, head], want, atol=ATOL)
        mu = z[layer][:, :, head].mean((0, 1))

        def mean_fn(zz, head=head, mu=mu):
            zz[:, :, head] = mu
            return zz
        want = metric_of(run_replacing(lm.model, ids, mask, {layer: mean_fn}), end, tgt, wrong)
        assert torch.allclose(mean.values[layer, head], want, atol=ATOL)


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-mha"])
def test_activation_patching_matches_oracle(family):
    lm, ids, corr, mask, metric, (end, tgt, wrong) = setup(family)
    res = activation_patching(lm, ids, mask, corr, mask, metric, direction="noising")
    den = activation_patching(lm, ids, mask, corr, mask, metric, direction="denoising")
    pos = activation_patching(lm, ids, mask, corr, mask, metric, per_position=True, heads=[HeadId(1, 3)])
    zc, _ = raw_z(lm.model, ids, mask)
    zr, _ = raw_z(lm.model, corr, mask)
    for layer, head in SAMPLED:
        def patch(zz, head=head, src=zr[layer]):
            zz[:, :, head] = src[:, :, head]
            return zz
        want = metric_of(run_replacing(lm.model, ids, mask, {layer: patch}), end, tgt, wrong)
        assert torch.allclose(res.values[layer, head], want, atol=ATOL)

        def patch_back(zz, head=head, src=zc[layer]):
            zz[:, :, head] = src[:, :, head]
            return zz
        want = metric_of(run_replacing(lm.model, corr, mask, {layer: patch_back}), end, tgt, wrong)
        assert torch.allclose(den.values[layer, head], want, atol=ATOL)
    for p in (2, 4, 7):
        def patch_pos(zz, p=p, src=zr[1]):
            zz[:, p, 3] = src[:, p, 3]
            return zz
        want = metric_of(run_replacing(lm.model, ids, mask, {1: patch_pos}), end, tgt, wrong)
        assert torch.allclose(pos.values[1, 3, p], want, atol=ATOL)


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-mha"])
def test_path_patching_to_logits_matches_oracle(family):
    lm, ids, corr, mask, metric, (end, tgt, wrong) = setup(family)
    res = path_patching(lm, ids, mask, corr, mask, metric, receivers="logits")
    zc, _ = raw_z(lm.model, ids, mask)
    zr, _ = raw_z(lm.model, corr, mask)
    L = lm.model.config.num_hidden_layers
    for layer, head in SAMPLED:
        replace = {}

        def sender(zz, head=head, src=zr[layer]):
            zz[:, :, head] = src[:, :, head]
            return zz
        replace[layer] = sender
        for m in range(layer + 1, L):
            replace[m] = lambda zz, src=zc[m]: src.clone()
        want = metric_of(run_replacing(lm.model, ids, mask, replace), end, tgt, wrong)
        assert torch.allclose(res.values[layer, head], want, atol=ATOL)


def test_path_patching_to_receiver_keys_matches_oracle():
    lm, ids, corr, mask, metric, (end, tgt, wrong) = setup("llama-mha")
    model = lm.model
    receiver = HeadId(2, 1)
    res = path_patching(lm, ids, mask, corr, mask, metric, receivers=[receiver], receiver_input="k")
    zc, _ = raw_z(model, ids, mask)
    zr, _ = raw_z(model, corr, mask)
    k_proj = model.model.layers[2].self_attn.k_proj
    d = model.config.head_dim
    for layer, head in [(0, 2), (1, 0)]:
        replace = {layer: (lambda zz, head=head, src=zr[layer]: torch.cat(
            [zz[:, :, :head], src[:, :, head:head + 1], zz[:, :, head + 1:]], 2))}
        for m in range(layer + 1, 2):
            replace[m] = lambda zz, src=zc[m]: src.clone()
        box: dict = {}
        h = k_proj.register_forward_hook(lambda mod, a, out, box=box: box.__setitem__("k", out.detach().clone()))
        try:
            run_replacing(model, ids, mask, replace)
        finally:
            h.remove()

        def patch_k(mod, a, out, box=box):
            out = out.clone()
            out[..., receiver.head * d:(receiver.head + 1) * d] = box["k"][..., receiver.head * d:(receiver.head + 1) * d]
            return out
        h = k_proj.register_forward_hook(patch_k)
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
        finally:
            h.remove()
        want = metric_of(logits, end, tgt, wrong)
        assert torch.allclose(res.values[layer, head], want, atol=ATOL)
    assert torch.isnan(res.values[2:]).all()  # senders at or after the receiver layer are not tested


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-mha"])
def test_attribution_patching_matches_raw_gradients(family):
    lm, ids, corr, mask, metric, (end, tgt, wrong) = setup(family)
    res = attribution_patching(lm, ids, mask, corr, mask, metric)
    model = lm.model
    H = n_heads(model)
    zr, _ = raw_z(model, corr, mask)
    kept, handles = {}, []
    for layer in range(model.config.num_hidden_layers):
        def fn(mod, args, layer=layer):
            delta = torch.zeros_like(args[0], requires_grad=True)
            kept[layer] = (args[0].detach(), delta)
            return (args[0] + delta,)
        handles.append(o_proj(model, layer).register_forward_pre_hook(fn))
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
            metric_of(logits, end, tgt, wrong).sum().backward()
    finally:
        for h in handles:
            h.remove()
    for layer, head in SAMPLED:
        x, delta = kept[layer]
        zc = x.unflatten(-1, (H, -1))
        grad = delta.grad.unflatten(-1, (H, -1))
        want = ((zr[layer] - zc) * grad)[:, :, head].sum((1, 2))
        assert torch.allclose(res.values[layer, head], want, atol=ATOL)


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-mha", "qwen2-gqa", "opt-mha"])
def test_dla_sums_to_logit_difference(family):
    lm, ids, _, mask, metric, (end, tgt, wrong) = setup(family)
    res = direct_logit_attribution(lm, ids, mask, metric)
    with torch.no_grad():
        want = metric_of(lm.model(input_ids=ids, attention_mask=mask).logits, end, tgt, wrong)
    assert torch.allclose(res.total, want, atol=ATOL)
    assert torch.allclose(res.component_sum(), want, atol=1e-3), (res.component_sum() - want)
    assert res.rest.abs().max() < 1e-3 or family in ("gpt2-mha", "opt-mha")  # LayerNorm bias lands in rest


def test_dla_head_matches_manual_rmsnorm_linearisation():
    lm, ids, _, mask, metric, (end, tgt, wrong) = setup("llama-gqa")
    res = direct_logit_attribution(lm, ids, mask, metric)
    model = lm.model
    z, _ = raw_z(model, ids, mask)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # pre-norm final residual = hidden_states before the final norm: rebuild via a hook on the norm
    box = {}
    h = model.model.norm.register_forward_pre_hook(lambda mod, a: box.__setitem__("x", a[0].detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    h.remove()
    del hs
    x = box["x"][torch.arange(4), end]
    s = (x.pow(2).mean(-1, keepdim=True) + model.model.norm.variance_epsilon).sqrt()
    gamma = model.model.norm.weight
    W_U = model.lm_head.weight
    u = W_U[tgt] - W_U[wrong]
    layer, head = 1, 2
    d = model.config.head_dim
    W_O = model.model.layers[layer].self_attn.o_proj.weight[:, head * d:(head + 1) * d]  # [D, d]
    r = z[layer][torch.arange(4), end][:, head] @ W_O.T
    want = ((r / s) * gamma * u).sum(-1)
    assert torch.allclose(res.heads[layer, head], want, atol=ATOL)


def test_logit_lens_matches_hidden_states():
    lm, ids, _, mask, metric, (end, tgt, _wrong) = setup("llama-gqa")
    res = logit_lens(lm, ids, mask, metric.with_kind("prob"))
    model = lm.model
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    L = model.config.num_hidden_layers
    probs = torch.softmax(out.logits[torch.arange(4), end], -1)[torch.arange(4), tgt]
    assert torch.allclose(res.prob[L], probs, atol=1e-5)
    for depth in range(L):
        hsd = out.hidden_states[depth][torch.arange(4), end]
        with torch.no_grad():
            p = torch.softmax(model.lm_head(model.model.norm(hsd)), -1)[torch.arange(4), tgt]
        assert torch.allclose(res.prob[depth], p, atol=1e-5)
    assert (res.rank[L] == (out.logits[torch.arange(4), end] > out.logits[torch.arange(4), end, tgt][:, None]).sum(-1)).all()
