"""The scan's pattern passes at long context: layer-by-layer scoring equals scoring the whole record, and
long sequences score evenly spaced query rows whose means estimate the all-rows means."""

from __future__ import annotations

import pytest
import torch

import headmine.pipeline.capture_plans as plans
import headmine.pipeline.scan as scan
from headmine.capture import CaptureSpec, run_capture, stream_pattern_layers
from headmine.core.errors import CaptureError
from headmine.core.ids import Site
from headmine.detectors import ScoreAccumulator, get_detector
from headmine.models.loading import load_model
from headmine.pipeline.capture_plans import PassContext, plain_pass, sampled_query_rows
from headmine.tasks import TokenBatch, load_probe
from tests.tiny_models import tiny_model

PATTERN_DETECTORS = ("induction", "prefix_matching", "attention_sink", "previous_token")


def _context(lm, names):
    dets = [get_detector(n) for n in names]
    return PassContext(lm=lm, detectors=dets, accumulators={d.name: ScoreAccumulator() for d in dets}, weights=None,
                       base_meta={"n_layers": lm.geometry.n_layers, "n_heads": lm.geometry.n_heads}, stage="test")


def _repeated(n: int, half: int, seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(5, 90, (n, half), generator=g)
    ids = torch.cat([torch.ones(n, 1, dtype=torch.long), r, r], dim=1)
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # one padded row
    return TokenBatch(input_ids=ids, attention_mask=mask, task="repeated_tokens")


def test_sampled_query_rows():
    assert sampled_query_rows(512) is None and sampled_query_rows(20, 32) is None
    rows = sampled_query_rows(8000)
    assert len(rows) == 512 and rows[0] == 0 and rows[-1] == 7999 and list(rows) == sorted(set(rows))


def test_layer_streamed_scores_equal_whole_record_scores():
    lm = tiny_model("llama-gqa")
    lm.model.set_attn_implementation("sdpa")  # recompute path, as a long-context scan runs
    probe = _repeated(3, 12)
    ctx = _context(lm, PATTERN_DETECTORS)
    spec = CaptureSpec(sites=frozenset({Site.PATTERN}), keep_logits=False)
    plain_pass(ctx, spec, probe, batch_size=2)
    record = run_capture(lm, spec, probe.input_ids, probe.attention_mask)
    for d in ctx.detectors:
        whole = ScoreAccumulator()
        for sub in probe.split(2):
            whole.add(d.score(run_capture(lm, spec, sub.input_ids, sub.attention_mask), ctx.base_meta, None))
        torch.testing.assert_close(ctx.accumulators[d.name].sum, whole.sum, rtol=0, atol=1e-9)
        torch.testing.assert_close(ctx.accumulators[d.name].count, whole.count)
        assert whole.count.sum() > 0
    assert record.pattern_source == "recomputed from q,k (sdpa forward)"


def test_stream_pattern_layers_holds_one_layer_per_record():
    lm = tiny_model("gemma3-mqa")
    probe = _repeated(2, 6)
    seen = []
    stream_pattern_layers(lm, CaptureSpec(sites=frozenset({Site.PATTERN}), query_positions="last"), probe.input_ids,
                          probe.attention_mask, lambda layer, rec: seen.append((layer, sorted(rec.pattern), rec.pattern[layer].shape)))
    assert seen == [(layer, [layer], (2, 4, 1, 13)) for layer in range(3)]
    with pytest.raises(CaptureError, match="patterns only"):
        stream_pattern_layers(lm, CaptureSpec(sites=frozenset({Site.Z})), probe.input_ids, None, lambda *a: None)


@pytest.mark.slow
def test_sampled_rows_estimate_the_all_rows_scores(smollm2, monkeypatch):
    """On SmolLM2 (repeated tokens, T = 301), 64 evenly spaced rows give the all-rows induction and sink
    scores within 0.05 and the same best induction head."""
    probe = load_probe("repeated_tokens", smollm2.tokenizer, n=2, seed=0, seq_len=150)
    spec = CaptureSpec(sites=frozenset({Site.PATTERN}), keep_logits=False)
    means = []
    for max_rows in (512, 64):
        monkeypatch.setattr(plans, "MAX_QUERY_ROWS", max_rows)
        ctx = _context(smollm2, ("induction", "attention_sink"))
        plain_pass(ctx, spec, probe, batch_size=2)
        means.append({name: acc.mean_stderr()[0] for name, acc in ctx.accumulators.items()})
    full, sampled = means
    for name in full:
        assert abs(full[name] - sampled[name]).max() < 0.05, name
    assert full["induction"].argmax() == sampled["induction"].argmax()
    assert full["induction"].max() > 0.4  # SmolLM2 has induction heads: the comparison is not of noise


def test_scan_records_how_patterns_were_made(monkeypatch):
    """The scan's provenance says whether patterns were recomputed under SDPA or read from eager weights."""
    def fake_probe(task, tokenizer, **params):
        return _repeated(2, 6)

    monkeypatch.setattr(scan, "load_probe", fake_probe)
    lm = tiny_model("llama-gqa")
    config = scan.ScanConfig(detectors=("induction",), causal=False)
    assert scan.scan_model(lm, config).model_info["pattern_source"] == "eager"
    lm.model.set_attn_implementation("sdpa")
    result = scan.scan_model(lm, config)
    assert result.model_info["pattern_source"] == "recomputed from q,k (sdpa forward)"
    assert result.model_info["attn_implementation"] == "eager"  # the load-time provenance is kept as it was


@pytest.mark.slow
def test_needle_prompts_from_1k_to_8k_tokens(smollm2):
    """The needle task builds 1K-8K-token prompts (the haystack cycles the corpus) whose needle span is the
    needle sentence and whose answer span holds the answer's tokens."""
    probe = load_probe("needle", smollm2.tokenizer, n=1, seed=3, context_lengths=(1024, 2048, 4096, 8176), depths=(0.5,))
    for i, length in enumerate((1024, 2048, 4096, 8176)):
        n = int(probe.meta["n_tokens"][i])
        assert 0.95 * length <= n <= length
        a, b = probe.meta["needle_span"][i].tolist()
        text = smollm2.tokenizer.decode(probe.input_ids[i, a:b].tolist())
        assert text.strip().startswith("The secret code of the") and probe.meta["answer"][i] in text
        a0, a1 = probe.meta["answer_span"][i].tolist()
        assert tuple(probe.input_ids[i, a0:a1].tolist()) == probe.meta["answer_ids"][i]


@pytest.mark.slow
def test_retrieval_scan_at_1k_tokens_under_sdpa():
    """SmolLM2 under SDPA finds the needle at ~1K tokens and retrieval heads (score > 0.1) from recomputed
    last-row patterns: the scan's decoding pass at long context without eager attention."""
    lm = load_model("smollm2", attn_implementation="sdpa")
    config = scan.ScanConfig(detectors=("retrieval",), causal=False,
                             probe_params={"needle": {"n": 1, "context_lengths": (1024,), "depths": (0.5,)}})
    result = scan.scan_model(lm, config)
    assert result.model_info["pattern_source"] == "recomputed from q,k (sdpa forward)"
    values = result.scores[result.scores.metric == "score"].value
    assert values.notna().all()  # the model retrieved the needle: the prompt was kept
    assert (values > 0.1).sum() >= 1
