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


def test_sdpa_model_switches_to_eager_for_patterns():
    from headmine.models.loading import load_model

    lm = load_model("smollm2", attn_implementation="sdpa")
    enc = lm.tokenize(["a b c d e f"])
    rec = run_capture(lm, CaptureSpec(sites={Site.PATTERN}, heads=(HeadId(3, 1),)), **enc)
    assert "switched from sdpa" in rec.pattern_source
    assert lm.model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(rec.pattern[3].sum(-1), torch.ones_like(rec.pattern[3].sum(-1)))
