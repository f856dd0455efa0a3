"""Patterns recomputed from q and k (forward under SDPA) equal eager attention's weights, on every tiny
family and on variants that exercise sliding windows and attention-logit soft-capping."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, Gemma2Config, MistralConfig, Qwen2Config

from headmine.capture import CaptureSpec, run_capture
from headmine.capture.patterns import query_block_size, recompute_pattern
from headmine.core.errors import CaptureError
from headmine.core.ids import HeadId, Site
from headmine.core.provenance import ModelProvenance
from headmine.models.base import AttentionScoring
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from headmine.pipeline import doctor
from tests.tiny_models import CONFIGS, VOCAB, _llama_like, tiny_model

ATOL = 1e-5
PATTERN = frozenset({Site.PATTERN})

VARIANTS = {  # windows shorter than the sequence, and a soft-cap small enough to change the pattern
    "gemma2-window-softcap": lambda: _llama_like(Gemma2Config, 2, query_pre_attn_scalar=8, sliding_window=3,
                                                 attn_logit_softcapping=0.5),
    "mistral-window": lambda: _llama_like(MistralConfig, 2, sliding_window=3),
    "qwen2-window": lambda: _llama_like(Qwen2Config, 2, use_sliding_window=True, sliding_window=3, max_window_layers=1,
                                        layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
}


def variant_model(name: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    config = VARIANTS[name]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # larger q/k weights: logits of several units, so the soft-cap and windows matter
        for m in model.modules():
            if hasattr(m, "q_proj"):
                m.q_proj.weight.mul_(8)
                m.k_proj.weight.mul_(8)
    prov = ModelProvenance(name=name, source="in-process", source_kind="random", model_type=config.model_type)
    return LoadedModel(name=name, model=model, tokenizer=None, adapter=adapter_for(model), provenance=prov)


ALL = sorted(CONFIGS) + sorted(VARIANTS)


@pytest.fixture(scope="module", params=ALL)
def model(request):
    return tiny_model(request.param) if request.param in CONFIGS else variant_model(request.param)


@pytest.fixture(scope="module")
def padded():
    """Right-padded batch (rows of 12, 9 and 5 real tokens) and the same rows unpadded."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    return ids, mask


def _eager(lm, ids, mask, **spec):
    rec = run_capture(lm, CaptureSpec(sites=PATTERN, pattern_mode="eager", **spec), ids, mask)
    assert rec.pattern_source == "eager"
    return rec


def _assert_patterns_equal(ref, rec):
    assert sorted(ref.pattern) == sorted(rec.pattern)
    assert ref.heads == rec.heads
    for layer in ref.pattern:
        assert rec.pattern[layer].dtype == ref.pattern[layer].dtype
        torch.testing.assert_close(rec.pattern[layer], ref.pattern[layer], rtol=0, atol=ATOL)


def _switch_to_sdpa(lm) -> bool:
    """Run ``lm`` under SDPA; False for a family transformers runs only eager (Gemma 2: its soft-cap), which
    test_recompute_beside_an_eager_forward covers."""
    if lm.model.config.model_type == "gemma2":
        with pytest.raises(ValueError, match="does not support"):
            lm.model.set_attn_implementation("sdpa")
        return False
    lm.model.set_attn_implementation("sdpa")
    return True


@pytest.mark.parametrize("padding", [False, True], ids=["unpadded", "padded"])
def test_recompute_equals_eager_under_sdpa(model, padded, padding):
    ids, mask = padded
    if not padding:
        mask = torch.ones_like(mask)
    ref = _eager(model, ids, mask)
    if not _switch_to_sdpa(model):
        return
    try:
        rec = run_capture(model, CaptureSpec(sites=PATTERN), ids, mask)
    finally:
        model.model.set_attn_implementation("eager")
    assert rec.pattern_source == "recomputed from q,k (sdpa forward)"
    _assert_patterns_equal(ref, rec)


def test_recompute_beside_an_eager_forward(model, padded):
    ids, mask = padded
    ref = _eager(model, ids, mask)
    auto = run_capture(model, CaptureSpec(sites=PATTERN), ids, mask)
    assert auto.pattern_source == "eager"  # an eager forward already returns its weights
    rec = run_capture(model, CaptureSpec(sites=PATTERN, pattern_mode="recompute"), ids, mask)
    assert rec.pattern_source == "recomputed from q,k (eager forward)"
    _assert_patterns_equal(ref, rec)


@pytest.mark.parametrize("q_block", [1, 2, 5, None])
def test_selected_heads_rows_and_blocks(model, padded, q_block):
    ids, mask = padded
    g = model.geometry
    full = _eager(model, ids, mask)
    heads = (HeadId(1, g.n_heads - 1), HeadId(1, 0), HeadId(2, 1))  # a query head of the last KV group too
    for qp in [(0, 4, 11, -2), "last", torch.tensor([11, 8, 4])]:
        rec = run_capture(model, CaptureSpec(sites=PATTERN, heads=heads, query_positions=qp, pattern_mode="recompute",
                                             query_block=q_block), ids, mask)
        ref = run_capture(model, CaptureSpec(sites=PATTERN, heads=heads, query_positions=qp, pattern_mode="eager"), ids, mask)
        _assert_patterns_equal(ref, rec)
        assert rec.heads == {1: [0, g.n_heads - 1], 2: [1]}
        # and they are the rows of the full eager pattern
        rows = ref.query_index
        layer1 = full.pattern[1][:, [0, g.n_heads - 1]]
        expect = layer1[:, :, rows] if rows.dim() == 1 else layer1[torch.arange(3)[:, None], :, rows].transpose(1, 2)
        torch.testing.assert_close(rec.pattern[1], expect, rtol=0, atol=ATOL)


def test_doctor_check_passes(model, padded):
    result = doctor.check_pattern_recompute(model, *padded)
    assert result.passed, f"{model.name}: {result.value} ({result.detail})"


def test_variants_exercise_windows_and_softcap():
    """Without its window or its soft-cap the recompute no longer matches: the variants test both."""
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    lm = variant_model("gemma2-window-softcap")
    ref = _eager(lm, ids, mask)
    layer = 0  # Gemma 2 alternates: layer 0 slides
    scoring = lm.adapter.attention_scoring(layer)
    assert scoring.window == 3 and scoring.softcap == 0.5
    assert ref.pattern[layer][0, 0, 11, :9].abs().max() == 0  # keys before the window get nothing
    box = {}

    def keep(module, args, kwargs, output):
        inputs = lm.adapter.attention_inputs(layer, args, kwargs)
        box["qk"] = lm.adapter.attention_qk(layer, inputs)

    handle = lm.adapter.attention(layer).register_forward_hook(keep, with_kwargs=True)
    try:
        lm.forward(ids, mask)
    finally:
        handle.remove()
    q, k = box["qk"]
    heads = torch.arange(lm.geometry.n_heads)
    for broken in (AttentionScoring(scaling=scoring.scaling, causal=True, window=scoring.window),
                   AttentionScoring(scaling=scoring.scaling, causal=True, softcap=scoring.softcap)):
        wrong = recompute_pattern(q, k, broken, heads=heads, key_mask=mask)
        assert (wrong - ref.pattern[layer]).abs().max() > 1e-2
    right = recompute_pattern(q, k, scoring, heads=heads, key_mask=mask)
    torch.testing.assert_close(right, ref.pattern[layer], rtol=0, atol=ATOL)
    windows = {name: [variant_model(name).adapter.attention_scoring(layer).window for layer in range(3)]
               for name in ("mistral-window", "qwen2-window")}
    assert windows == {"mistral-window": [3, 3, 3], "qwen2-window": [None, 3, 3]}


class _SoftmaxSizes(TorchDispatchMode):
    """Records the element count of every softmax the block computes."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten._softmax, torch.ops.aten.softmax):
            self.sizes.append(out.numel())
        return out


def test_memory_is_bounded_by_one_query_block():
    """The logits and softmax of one block hold batch x heads x q_block x k_len elements: never more."""
    b, h, kv, t, d = 2, 6, 2, 300, 8
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(b, h, t, d, generator=gen), torch.randn(b, kv, t, d, generator=gen)
    heads = torch.tensor([1, 4])
    scoring = AttentionScoring(scaling=d**-0.5, causal=True)
    with _SoftmaxSizes() as sizes:
        blocked = recompute_pattern(q, k, scoring, heads=heads, q_block=16)
    assert len(sizes.sizes) == -(-t // 16) and max(sizes.sizes) == b * 2 * 16 * t
    # the same rows as one dense softmax with the GQA mapping (query head h reads KV head h // 3)
    logits = q[:, heads] @ k[:, heads // 3].transpose(-1, -2) * scoring.scaling
    logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(blocked, logits.softmax(-1), rtol=0, atol=ATOL)
    assert query_block_size(1, 9, 8192) * 9 * 8192 <= 1 << 24


def test_bfloat16_pattern_keeps_the_eager_dtype(padded):
    lm = tiny_model("llama-gqa")
    lm.model.to(torch.bfloat16)
    ids, mask = padded
    ref = _eager(lm, ids, mask)
    rec = run_capture(lm, CaptureSpec(sites=PATTERN, pattern_mode="recompute"), ids, mask)
    for layer in ref.pattern:
        assert rec.pattern[layer].dtype == torch.bfloat16
        torch.testing.assert_close(rec.pattern[layer].float(), ref.pattern[layer].float(), rtol=0, atol=2e-2)


def test_gradients_flow_through_the_recompute(padded):
    """detach=False keeps the graph: d(pattern)/d(embedding) is the same as through eager weights."""
    ids, mask = padded
    grads = []
    for mode in ("eager", "recompute"):
        lm = tiny_model("llama-gqa")
        emb = lm.adapter.embedding().weight
        emb.requires_grad_(True)
        rec = run_capture(lm, CaptureSpec(sites=PATTERN, layers=(1,), pattern_mode=mode, detach=False), ids, mask)
        rec.pattern[1][:, :, :, 0].sum().backward()
        grads.append(emb.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert grads[0].abs().max() > 0


def test_modes_and_errors(padded, monkeypatch):
    ids, mask = padded
    lm = tiny_model("llama-gqa")
    lm.model.set_attn_implementation("sdpa")
    rec = run_capture(lm, CaptureSpec(sites=PATTERN, pattern_mode="eager"), ids, mask)
    assert rec.pattern_source == "eager (switched from sdpa for this capture)"
    assert lm.model.config._attn_implementation == "sdpa"
    no_patterns = run_capture(lm, CaptureSpec(sites={Site.Z}), ids, mask)
    assert no_patterns.pattern_source == ""
    with pytest.raises(CaptureError, match="pattern_mode"):
        CaptureSpec(sites=PATTERN, pattern_mode="fast")
    with pytest.raises(CaptureError, match="query_block"):
        CaptureSpec(sites=PATTERN, query_block=0)
    monkeypatch.setattr(type(lm.adapter), "recomputes_patterns", False)  # a family without it (plugins by default)
    fallback = run_capture(lm, CaptureSpec(sites=PATTERN), ids, mask)
    assert fallback.pattern_source == "eager (switched from sdpa for this capture)"
    with pytest.raises(CaptureError, match="cannot recompute patterns"):
        run_capture(lm, CaptureSpec(sites=PATTERN, pattern_mode="recompute"), ids, mask)
