"""Edge attribution (EAP / EAP-IG) on tiny Llama (GQA, MHA) and Gemma 3 (MQA) models: identities of the
split forward, scores against an autograd oracle and exact patching, native GQA against an ungrouped
copy, IG convergence, pruning, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from headmine.causal.edge_attribution import (
    EdgeAttributionConfig,
    EdgeGraph,
    EdgePatcher,
    curves,
    edge_scores,
    prune,
    top_edges,
)
from headmine.causal.edge_attribution.forward import EdgeForward, PatchReader
from headmine.causal.edge_attribution.scores import graph_of, receiver_grads, writes_of
from headmine.causal.metrics import AnswerMetric
from headmine.causal.path_patching import path_patching
from headmine.core.errors import InputError, UnsupportedModelError
from headmine.core.ids import HeadId
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from tests.tiny_models import tiny_model

B, T = 3, 7


def _pair(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AnswerMetric]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 97, (B, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 97, (B,), generator=g)
    mask = torch.ones_like(clean)
    metric = AnswerMetric(kind="answer_logprob", end_pos=torch.full((B,), T - 1), target_id=torch.tensor([1, 2, 3]))
    return clean, corrupted, mask, metric


@pytest.fixture(scope="module", params=["llama-gqa", "gemma3-mqa"])
def lm64(request) -> LoadedModel:
    lm = tiny_model(request.param)
    lm.model.double()
    return lm


def test_graph_counts_and_names() -> None:
    g = EdgeGraph(30, 9, 3)  # SmolLM2-135M, grouped natively
    assert (g.n_senders, g.n_receivers) == (301, 481)
    assert g.n_edges == sum(15 * (1 + 10 * m) + (10 + 10 * m) for m in range(30)) + 301
    assert g.sender_name(g.head_sender(2, 4)) == "L2H4" and g.sender_name(g.mlp_sender(2)) == "M2"
    assert g.receiver_name(g.k_receivers(3).start + 1) == "L3KV1.k" and g.receiver_name(g.logits_receiver) == "logits"
    # layer order: attention of layer 1 reads input + layer 0; the MLP of layer 1 also reads layer 1's heads
    assert g.prefix(g.q_receivers(1).start) == 11 and g.prefix(g.mlp_receiver(1)) == 20
    assert g.receiver_nodes[g.v_receivers(0).start + 2] == [g.head_sender(0, h) for h in (6, 7, 8)]
    with pytest.raises(InputError):
        EdgeGraph(2, 9, 2)


def test_writes_sum_to_the_residual_and_patch_identities(lm64: LoadedModel) -> None:
    clean, corrupted, mask, metric = _pair()
    g = graph_of(lm64)
    writes, logits = writes_of(lm64, g, clean, mask)
    seen = {}
    handle = lm64.adapter.final_norm().register_forward_pre_hook(lambda mod, a: seen.__setitem__("x", a[0]))
    try:
        ref = lm64.model(input_ids=clean, attention_mask=mask).logits
    finally:
        handle.remove()
    assert torch.equal(logits, ref)
    torch.testing.assert_close(writes.sum(2), seen["x"], rtol=1e-5, atol=1e-6)  # Gemma norms run in float32
    patcher = EdgePatcher(lm64, clean, mask, corrupted, mask, metric)
    none = patcher.metric_of(np.zeros(g.allowed.shape, dtype=bool))
    every = patcher.metric_of(g.allowed)
    torch.testing.assert_close(none, metric(ref), rtol=0, atol=1e-5)
    torch.testing.assert_close(every, metric(lm64.model(input_ids=corrupted, attention_mask=mask).logits), rtol=0, atol=1e-5)


def test_eap_equals_the_autograd_derivative_of_edge_patching(lm64: LoadedModel) -> None:
    """EAP is the derivative of exact edge patching at the clean point: d metric / d P[u, v] at P = 0,
    taken through the patched forward (another route: forward corrections, not receiver gradients)."""
    clean, corrupted, mask, metric = _pair()
    g = graph_of(lm64)
    scores = edge_scores(lm64, clean, mask, corrupted, mask, metric, steps=0)
    corr_writes, _ = writes_of(lm64, g, corrupted, mask)
    weights = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64, requires_grad=True)
    reader = PatchReader(weights, corr_writes)
    with torch.enable_grad():
        metric(EdgeForward(lm64, g, reader).run(clean, mask)).mean().backward()
    oracle = torch.where(torch.from_numpy(g.allowed), weights.grad, torch.zeros((), dtype=torch.float64))
    assert scores.abs().max() > 1e-4
    torch.testing.assert_close(scores, oracle, rtol=1e-4, atol=1e-7)


def test_eap_close_to_exact_patching_for_small_patches(lm64: LoadedModel) -> None:
    """Central finite differences of exact single-edge patching (P[u, v] = +-eps) match the scores."""
    clean, corrupted, mask, metric = _pair()
    g = graph_of(lm64)
    scores = edge_scores(lm64, clean, mask, corrupted, mask, metric, steps=0).numpy()
    patcher = EdgePatcher(lm64, clean, mask, corrupted, mask, metric)
    flat = np.where(g.allowed, np.abs(scores), -1).ravel()
    eps = 1e-2
    for idx in np.argsort(-flat)[:4]:
        u, v = divmod(int(idx), g.n_receivers)
        p = np.zeros(g.allowed.shape)
        p[u, v] = eps
        fd = (patcher.metric_of(p).mean() - patcher.metric_of(-p).mean()) / (2 * eps)
        assert float(fd) == pytest.approx(scores[u, v], rel=2e-2, abs=1e-5)


def test_edge_patching_matches_path_patching_with_frozen_mlps() -> None:
    """Independent route: path patching (sender corrupted, later heads and MLPs frozen) into the logits
    or one receiver's keys is exactly the patch of the edge sender -> receiver (Llama: no post-norm)."""
    lm = tiny_model("llama-gqa")
    clean, corrupted, mask, metric = _pair()
    g = graph_of(lm)
    patcher = EdgePatcher(lm, clean, mask, corrupted, mask, metric)
    to_logits = path_patching(lm, clean, mask, corrupted, mask, metric, freeze_mlps=True)
    p = np.zeros(g.allowed.shape, dtype=bool)
    p[g.head_sender(1, 2), g.logits_receiver] = True
    torch.testing.assert_close(patcher.metric_of(p), to_logits.values[1, 2], rtol=0, atol=1e-5)
    # receiver L2H3's keys = KV head 1 of layer 2 (GQA: shared with L2H2)
    to_keys = path_patching(lm, clean, mask, corrupted, mask, metric, freeze_mlps=True, senders=[HeadId(0, 3)],
                            receivers=[HeadId(2, 3)], receiver_input="k")
    p = np.zeros(g.allowed.shape, dtype=bool)
    p[g.head_sender(0, 3), g.k_receivers(2).start + lm.geometry.kv_head_of(3)] = True
    torch.testing.assert_close(patcher.metric_of(p), to_keys.values[0, 3], rtol=0, atol=1e-5)


def _ungrouped(lm: LoadedModel) -> LoadedModel:
    """An MHA copy of a GQA Llama: every query head gets its own copy of its group's k/v weights."""
    cfg = lm.model.config.__class__.from_dict(lm.model.config.to_dict())
    cfg.num_key_value_heads = cfg.num_attention_heads
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval().to(lm.dtype)
    state = lm.model.state_dict()
    g = lm.geometry
    group = g.n_heads // g.n_kv_heads
    for name, tensor in list(state.items()):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            state[name] = tensor.view(g.n_kv_heads, g.d_head, -1).repeat_interleave(group, 0).reshape(-1, tensor.shape[-1])
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(name="ungrouped", model=model, tokenizer=None, adapter=adapter_for(model), provenance=lm.provenance)


def test_native_gqa_equals_an_ungrouped_reference() -> None:
    """A KV head's k (v) receiver is its group's query heads' k (v) inputs tied together: its scores are
    the sums of the ungrouped model's per-query-head scores; every other edge score is the same."""
    lm = tiny_model("llama-gqa")
    lm.model.double()
    ref = _ungrouped(lm)
    clean, corrupted, mask, metric = _pair()
    torch.testing.assert_close(ref.model(input_ids=clean).logits, lm.model(input_ids=clean).logits)
    native = edge_scores(lm, clean, mask, corrupted, mask, metric, steps=2)
    flat = edge_scores(ref, clean, mask, corrupted, mask, metric, steps=2)
    gn, gf = graph_of(lm), graph_of(ref)
    group = lm.geometry.n_heads // lm.geometry.n_kv_heads
    for layer in range(lm.geometry.n_layers):
        torch.testing.assert_close(native[:, gn.q_receivers(layer)], flat[:, gf.q_receivers(layer)])
        for rn, rf in ((gn.k_receivers(layer), gf.k_receivers(layer)), (gn.v_receivers(layer), gf.v_receivers(layer))):
            summed = flat[:, rf].view(-1, lm.geometry.n_kv_heads, group).sum(-1)
            torch.testing.assert_close(native[:, rn], summed)
        torch.testing.assert_close(native[:, gn.mlp_receiver(layer)], flat[:, gf.mlp_receiver(layer)])
    torch.testing.assert_close(native[:, gn.logits_receiver], flat[:, gf.logits_receiver])
    assert native.abs().max() > 1e-4


def test_eap_ig_converges_to_the_exact_effect_on_a_linear_path() -> None:
    """With every head and MLP writing zero, the final residual is the embedding, which IG interpolates
    linearly: the score of input -> logits is a Riemann sum of the exact effect (error O(1/m)), while
    EAP (one gradient at the clean end) misses the metric's curvature. steps=1 is the gradient at the
    corrupted end (the paper's code: k = 0 .. m-1)."""
    lm = tiny_model("gemma3-mqa")
    lm.model.double()
    with torch.no_grad():
        for layer in range(lm.geometry.n_layers):
            lm.adapter.out_proj(layer).weight.zero_()
            lm.adapter.mlp(layer).down_proj.weight.zero_()
        lm.adapter.embedding().weight.mul_(30)  # (tied) logits large enough for a curved log-softmax
    clean, corrupted, mask, metric = _pair()
    corrupted[:, T - 1] = (clean[:, T - 1] + 5) % 97  # the last token changes, so the final residual does
    g = graph_of(lm)
    exact = float((metric(lm.model(input_ids=corrupted).logits) - metric(lm.model(input_ids=clean).logits)).mean())
    edge = (0, g.logits_receiver)
    err = {m: abs(float(edge_scores(lm, clean, mask, corrupted, mask, metric, steps=m)[edge]) - exact) for m in (0, 5, 40)}
    assert abs(exact) > 1.0
    assert err[40] < err[5] / 4 and err[40] < 0.02 * abs(exact) and err[0] > 5 * err[40]
    one = edge_scores(lm, clean, mask, corrupted, mask, metric, steps=1)
    grads, _, _ = receiver_grads(lm, g, corrupted, mask, metric)
    diff = writes_of(lm, g, corrupted, mask)[0] - writes_of(lm, g, clean, mask)[0]
    torch.testing.assert_close(one[edge], (diff[:, :, 0] * grads[:, :, g.logits_receiver]).sum() / B)


def test_pruning_keeps_the_metric_and_curves_reach_one() -> None:
    lm = tiny_model("llama-gqa")
    clean, corrupted, mask, metric = _pair()
    g = graph_of(lm)
    scores = edge_scores(lm, clean, mask, corrupted, mask, metric, steps=3).numpy()
    patcher = EdgePatcher(lm, clean, mask, corrupted, mask, metric, batch_size=2)
    for n in (5, 20):
        top = top_edges(scores, g, n)
        kept = prune(top, g)
        assert top.sum() == n and kept.sum() <= n and not (kept & ~top).any()
        torch.testing.assert_close(patcher.metric_of(g.allowed & ~top), patcher.metric_of(g.allowed & ~kept), rtol=0, atol=1e-5)
    f_clean, f_corr, points = curves(patcher, scores, [1, 10, g.n_edges])
    assert points[-1].kept == g.n_edges
    assert points[-1].faithfulness == pytest.approx(1.0) and points[-1].completeness == pytest.approx(1.0)
    assert f_clean != f_corr


def test_bad_input() -> None:
    lm = tiny_model("llama-gqa")
    clean, corrupted, mask, metric = _pair()
    with pytest.raises(InputError, match="steps"):
        edge_scores(lm, clean, mask, corrupted, mask, metric, steps=-1)
    with pytest.raises(InputError, match="shape"):
        edge_scores(lm, clean, mask, corrupted[:, :-1], mask[:, :-1], metric)
    short = mask.clone()
    short[0, -1] = 0
    with pytest.raises(InputError, match="length"):
        edge_scores(lm, clean, mask, corrupted, short, metric)
    with pytest.raises(UnsupportedModelError, match="cannot split"):
        edge_scores(tiny_model("gpt2-mha"), clean, mask, corrupted, mask, metric)
    with pytest.raises(InputError, match="edges"):
        EdgeAttributionConfig(task="ioi", edges="10,x")
    with pytest.raises(InputError, match="edges"):
        EdgeAttributionConfig(task="ioi", edges="0")
    with pytest.raises(InputError, match="n >= 2"):
        EdgeAttributionConfig(task="ioi", n=1)
