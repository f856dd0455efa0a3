"""Fast exact sweeps equal the naive loop on tiny random models (CPU)."""

from __future__ import annotations

import pytest
import torch

from headmine.causal.ablation import ablation_sweep
from headmine.causal.engine import run_with_interventions
from headmine.causal.fast_sweep import PrefixCache, RowwiseReplace, Variant, sweep_sets, sweep_variants
from headmine.causal.interventions import Mean, PatchFrom
from headmine.causal.metrics import AnswerMetric
from tests.tiny_models import VOCAB, tiny_model

torch.set_num_threads(1)
FAMILIES = ["llama-gqa", "gpt2-mha", "gemma3-mqa", "qwen2-gqa", "gpt_neox-mha", "opt-mha"]


def _inputs(b: int = 3, t: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # one right-padded row
    end = mask.sum(1) - 1
    metric = AnswerMetric(kind="logit_diff", end_pos=end, target_id=torch.randint(0, VOCAB, (b,), generator=g),
                          wrong_id=torch.randint(0, VOCAB, (b,), generator=g))
    return ids, mask, metric


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_fast_sweep_equals_naive(family: str, mode: str) -> None:
    lm = tiny_model(family)
    ids, mask, metric = _inputs()
    fast = ablation_sweep(lm, ids, mask, metric, mode=mode, fast=True, max_rows=7)  # forces several chunks
    naive = ablation_sweep(lm, ids, mask, metric, mode=mode, fast=False)
    assert torch.allclose(fast.baseline, naive.baseline, atol=1e-5)
    assert torch.allclose(fast.values, naive.values, atol=1e-5), (fast.values - naive.values).abs().max()
    assert fast.deltas.abs().max() > 0


def test_metric_kinds() -> None:
    logits = torch.randn(4, 3, 10)
    m = AnswerMetric(kind="prob", end_pos=torch.tensor([2, 1]), target_id=torch.tensor([3, 4]))
    p = m(logits)
    assert p.shape == (4,)
    assert torch.allclose(p[2], torch.softmax(logits[2, 2], -1)[3])
    assert torch.allclose(p[1], torch.softmax(logits[1, 1], -1)[4])


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-mqa"])
@pytest.mark.parametrize("max_rows", [2, 512])
def test_staggered_waves_per_length_equal_one_forward_per_variant(family: str, max_rows: int) -> None:
    """Per-position variants over prompts of three lengths (grouped by length, layers joining one running
    batch) give what one full forward with the same replacement gives, also at a position past a short
    prompt's end (a pad: nothing changes)."""
    lm = tiny_model(family)
    g = lm.geometry
    ids, mask, metric = _inputs(b=4, t=7, seed=3)
    mask[1, -3:] = 0
    metric = AnswerMetric(kind=metric.kind, end_pos=mask.sum(1) - 1, target_id=metric.target_id, wrong_id=metric.wrong_id)
    gen = torch.Generator().manual_seed(1)
    values = {layer: torch.randn(1, 4, 7, g.n_heads, g.d_head, generator=gen) for layer in range(g.n_layers)}
    variants = [Variant(layer, head, pos) for layer in range(g.n_layers) for head in (0, g.n_heads - 1) for pos in (0, 4, 6)]
    variants.append(Variant(g.n_layers - 1, -1))
    cache = PrefixCache(lm, ids, mask)
    assert [len(rows) for rows, _ in cache.length_groups()] == [1, 1, 2]
    fast = sweep_variants(cache, metric, variants, lambda layer: values[layer], max_rows=max_rows)
    for i, v in enumerate(variants):
        one = torch.zeros(1, 1, 7, g.n_heads, dtype=torch.bool)
        heads = slice(None) if v.head < 0 else v.head
        one[0, 0, slice(None) if v.position is None else v.position, heads] = True
        logits = run_with_interventions(lm, ids, mask, [RowwiseReplace(masks={v.layer: one}, values={v.layer: values[v.layer]})])
        assert torch.allclose(fast[i], metric(logits), atol=1e-5), (v, fast[i], metric(logits))
    assert (fast - metric(cache.logits)).abs().max() > 1e-2  # the replacements change the answer


@pytest.mark.parametrize("family", ["llama-gqa", "gpt2-mha", "gemma3-mqa"])
def test_head_sets_equal_one_forward_per_set(family: str) -> None:
    """Sets of heads spread over layers (and an empty set), mean-ablated together at every position, or
    patched at one position per prompt with the answer read there: what one forward per set gives."""
    lm = tiny_model(family)
    g = lm.geometry
    ids, mask, metric = _inputs(b=3, t=7, seed=5)
    gen = torch.Generator().manual_seed(2)
    means = {layer: torch.randn(g.n_heads, g.d_head, generator=gen) for layer in range(g.n_layers)}
    source = {layer: torch.randn(3, 7, g.n_heads, g.d_head, generator=gen) for layer in range(g.n_layers)}
    heads = g.heads()
    sets = [heads[i:i + 3] for i in range(0, len(heads), 2)] + [[], [heads[-1], heads[0]]]
    cache = PrefixCache(lm, ids, mask)
    full = sweep_sets(cache, sets, lambda layer: means[layer], lambda logits: logits, max_rows=6)
    end = metric.end_pos
    at_end = sweep_sets(cache, sets, lambda layer: source[layer][None], metric.from_end_logits, positions=end,
                        readout_positions=end)
    for i, hs in enumerate(sets):
        want = run_with_interventions(lm, ids, mask, [Mean(heads=tuple(hs), values={h.layer: means[h.layer] for h in hs})])
        assert torch.allclose(full[i], want, atol=1e-5), (i, (full[i] - want).abs().max())
        want = run_with_interventions(lm, ids, mask, [PatchFrom(heads=tuple(hs), positions=end,
                                                                source={h.layer: source[h.layer] for h in hs})])
        assert torch.allclose(at_end[i], metric(want), atol=1e-5), (i, at_end[i], metric(want))
    assert (full[0] - cache.logits).abs().max() > 1e-3
    starts = {min(h.layer for h in hs) for hs in sets if hs}
    lean = PrefixCache(lm, ids, mask, keep_layers=starts)  # only the layers where a set starts
    assert set(lean.resid) == starts
    again = sweep_sets(lean, sets, lambda layer: means[layer], lambda logits: logits, max_rows=6)
    assert all(torch.equal(a, b) for a, b in zip(again, full, strict=True))
