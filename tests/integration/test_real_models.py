"""The per-head wiring checks on the real embedded checkpoints (SmolLM2 GQA, Gemma 3 MQA, MiniLM BERT)."""

from __future__ import annotations

import pytest
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.core.ids import HeadId, Site
from headmine.pipeline.doctor import run_checks

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fixture", ["smollm2", "gemma3", "minilm"])
def test_doctor_checks_pass_on_real_weights(fixture, request):
    lm = request.getfixturevalue(fixture)
    failed = [(r.name, r.value, r.detail) for r in run_checks(lm) if not r.passed]
    assert not failed, failed


def test_real_geometries(smollm2, gemma3, minilm):
    assert (smollm2.geometry.n_layers, smollm2.geometry.n_heads, smollm2.geometry.n_kv_heads) == (30, 9, 3)
    assert (gemma3.geometry.n_layers, gemma3.geometry.n_heads, gemma3.geometry.n_kv_heads) == (18, 4, 1)
    assert (minilm.geometry.n_layers, minilm.geometry.n_heads) == (6, 12)
    assert not minilm.adapter.is_causal


def test_smollm2_knows_a_fact(smollm2):
    enc = smollm2.tokenize(["The capital of France is"])
    top = smollm2.forward(**enc)[0, -1].argmax().item()
    assert smollm2.tokenizer.decode([top]).strip() == "Paris"


def test_sdpa_model_recomputes_patterns_or_switches_to_eager_when_asked():
    """SmolLM2 loads with SDPA by default; its patterns are recomputed from q, k and equal the eager ones."""
    from headmine.models.loading import load_model

    lm = load_model("smollm2")
    assert lm.model.config._attn_implementation == "sdpa"
    enc = lm.tokenize(["The cat sat on the mat because the cat was tired"])
    rec = run_capture(lm, CaptureSpec(sites={Site.PATTERN}, heads=(HeadId(3, 1),)), **enc)
    assert rec.pattern_source == "recomputed from q,k (sdpa forward)"
    eager = run_capture(lm, CaptureSpec(sites={Site.PATTERN}, heads=(HeadId(3, 1),), pattern_mode="eager"), **enc)
    assert "switched from sdpa" in eager.pattern_source and lm.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(rec.pattern[3], eager.pattern[3], atol=1e-5, rtol=0)
    torch.testing.assert_close(rec.pattern[3].sum(-1), torch.ones_like(rec.pattern[3].sum(-1)))
