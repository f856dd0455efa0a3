"""IOI roles (causal/ioi_roles.py) and circuit evaluation (causal/ioi_circuit_eval.py) on tiny models:
planted heads are found and random ones are not, the ablated path patching and the circuit ablation match
raw-torch oracles, and bad input fails clearly."""

from __future__ import annotations

import pytest
import torch

from headmine.causal.engine import intervening
from headmine.causal.fast_sweep import PrefixCache
from headmine.causal.ioi_circuit_eval import (
    IOIBatch,
    TiledMean,
    ablation_of,
    circuit_faithfulness,
    metric_under,
)
from headmine.causal.ioi_roles import IOIRolesConfig, copy_scores, select
from headmine.causal.metrics import AnswerMetric
from headmine.causal.path_patching import path_patching
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from tests.tiny_models import VOCAB, tiny_model

torch.set_num_threads(1)
B, T = 6, 10


NAMES = torch.arange(10, 18)  # 8 "names" (d_head = 8 lets one head copy all of them)


def _batch(seed: int = 0, s_names: bool = False) -> IOIBatch:
    """Random prompts with IOI positions: IO at 1, S1 at 3, S2 at 6, END at T-1; answer IO vs S. IO (and
    with ``s_names`` S) are drawn from NAMES, the other tokens from outside it; ABC prompts likewise."""
    g = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        ids = torch.randint(20, VOCAB, (B, T), generator=g)
        ids[:, 1] = NAMES[torch.randint(0, len(NAMES), (B,), generator=g)]
        if s_names:
            ids[:, 3] = NAMES[(torch.randint(1, len(NAMES), (B,), generator=g) + (ids[:, 1] - 10)) % len(NAMES)]
        ids[:, 6] = ids[:, 3]
        return ids
    ids, corr = draw(), draw()
    pos = {"IO": torch.full((B,), 1), "S1": torch.full((B,), 3), "S2": torch.full((B,), 6), "END": torch.full((B,), T - 1)}
    pos["S1+1"] = pos["S1"] + 1
    metric = AnswerMetric(kind="logit_diff", end_pos=pos["END"], target_id=ids[:, 1], wrong_id=ids[:, 3])
    mask = torch.ones_like(ids)
    return IOIBatch(ids, mask, corr, mask.clone(), metric, pos, torch.zeros(B, dtype=torch.long))


def _plant_copier(lm, layer: int, head: int, scale: float) -> None:
    """Make (layer, head) of a tiny MHA Llama attend uniformly (zero query) and map each NAME's embedding onto
    its own unembedding (scale < 0: against it): a planted name mover / negative name mover."""
    m = lm.model.model
    attn, d = m.layers[layer].self_attn, lm.geometry.d_head
    rows = slice(head * d, (head + 1) * d)
    e = torch.nn.functional.normalize(m.embed_tokens.weight[NAMES] * m.layers[layer].input_layernorm.weight, dim=-1)
    w_u = lm.model.lm_head.weight[NAMES] * m.norm.weight
    with torch.no_grad():
        attn.q_proj.weight[rows] = 0
        attn.v_proj.weight[rows] = e * 10
        attn.o_proj.weight[:, rows] = scale * (w_u / w_u.norm(dim=-1, keepdim=True)).T


def _values(lm, batch: IOIBatch, seed: int = 1) -> dict[int, torch.Tensor]:
    g = lm.geometry
    gen = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(batch.n, T, g.n_heads, g.d_head, generator=gen) for layer in range(g.n_layers)}


def test_select_finds_a_planted_outlier_and_nothing_else():
    gen = torch.Generator().manual_seed(0)
    deltas = 0.01 * torch.randn(4, 5, 16, generator=gen)
    deltas[2, 3] -= 0.5  # planted: lowers LD by half of it on every prompt
    heads, tau, rel = select(deltas, 1.0, torch.ones(4, 5, dtype=torch.bool), -1, floor=0.02, mad_k=3.0, max_n=8)
    assert heads == [HeadId(2, 3)]
    assert tau >= 0.02 and rel[2, 3] < -0.4
    assert select(deltas, 1.0, torch.ones(4, 5, dtype=torch.bool), +1, floor=0.02, mad_k=3.0, max_n=8)[0] == []
    excluded = select(deltas, 1.0, torch.ones(4, 5, dtype=torch.bool), -1, floor=0.02, mad_k=3.0, max_n=8,
                      exclude={HeadId(2, 3)})[0]
    assert excluded == []
    with pytest.raises(InputError, match="logit difference"):
        select(deltas, -0.1, torch.ones(4, 5, dtype=torch.bool), -1, floor=0.02, mad_k=3.0, max_n=8)


def test_direct_path_test_finds_a_planted_name_mover_and_no_other_head():
    lm = tiny_model("llama-mha")
    _plant_copier(lm, 2, 1, 30.0)
    batch = _batch()
    eff = path_patching(lm, batch.ids, batch.mask, batch.corr_ids, batch.corr_mask, batch.metric, receivers="logits")
    deltas = eff.values - eff.baseline
    ld = float(eff.baseline.mean())
    assert ld > 0
    every = torch.ones(3, 4, dtype=torch.bool)
    assert select(deltas, ld, every, -1, floor=0.02, mad_k=3.0, max_n=8)[0] == [HeadId(2, 1)]
    assert select(deltas, ld, every, +1, floor=0.02, mad_k=3.0, max_n=8)[0] == []


def test_copy_score_of_a_planted_copying_head():
    """The planted copier ranks the name it reads first in the vocabulary; negated, last; others rarely."""
    lm = tiny_model("llama-mha")
    _plant_copier(lm, 0, 0, 1.0)
    batch = _batch(s_names=True)
    scores = copy_scores(lm, batch, [HeadId(0, 0), HeadId(1, 2)])
    assert scores[HeadId(0, 0)] == (1.0, 0.0)
    assert scores[HeadId(1, 2)][0] < 0.5
    _plant_copier(lm, 0, 0, -1.0)
    assert copy_scores(lm, batch, [HeadId(0, 0)])[HeadId(0, 0)] == (0.0, 1.0)


def _raw_z(model, ids, mask, pre=None):
    """z of every layer via raw o_proj pre-hooks, after the optional replacement ``pre`` {layer: fn}."""
    store, handles = {}, []
    h_n = model.config.num_attention_heads
    for layer, blk in enumerate(model.model.layers):
        def fn(mod, args, layer=layer):
            z = args[0].unflatten(-1, (h_n, -1)).clone()
            if pre and layer in pre:
                z = pre[layer](z)
            store[layer] = z
            return (z.flatten(-2),)
        handles.append(blk.self_attn.o_proj.register_forward_pre_hook(fn))
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()
    return store, logits


def test_path_patching_under_a_mean_ablation_matches_a_raw_oracle():
    """Backup test: path patching to the logits with 'name movers' mean-ablated, vs raw hooks."""
    lm = tiny_model("llama-gqa")
    batch = _batch()
    vals = _values(lm, batch)
    nm = (HeadId(2, 0), HeadId(1, 3))
    with intervening(lm, [TiledMean(heads=nm, values=vals)]):
        eff = path_patching(lm, batch.ids, batch.mask, batch.corr_ids, batch.corr_mask, batch.metric, receivers="logits")

    def ablate(layer):
        def f(z):
            for h in nm:
                if h.layer == layer:
                    z[:, :, h.head] = vals[layer][:, :, h.head]
            return z
        return f
    pre = {layer: ablate(layer) for layer in range(3)}
    zc, _ = _raw_z(lm.model, batch.ids, batch.mask, pre)
    zr, _ = _raw_z(lm.model, batch.corr_ids, batch.corr_mask, pre)
    for layer, head in [(0, 1), (1, 2), (2, 3)]:
        rep = {}
        for m in range(3):
            def f(z, m=m, layer=layer, head=head):
                z = ablate(m)(z)
                if m == layer:
                    z[:, :, head] = zr[m][:, :, head]
                elif m > layer:
                    z = zc[m].clone()
                return z
            rep[m] = f
        _, logits = _raw_z(lm.model, batch.ids, batch.mask, rep)
        want = batch.metric(logits)
        assert torch.allclose(eff.values[layer, head], want, atol=1e-4)


def test_circuit_ablation_matches_raw_oracle_and_full_circuit_is_faithful():
    lm = tiny_model("llama-gqa")
    batch = _batch()
    vals = _values(lm, batch)
    g = lm.geometry
    cache = PrefixCache(lm, batch.ids, batch.mask)
    keep = {HeadId(2, 1): "END", HeadId(1, 0): "S2"}
    variant = ablation_of(g.heads(), batch, g.n_heads, keep)
    got = metric_under(cache, batch.metric, [variant, {}], vals)

    def f(layer):
        def fn(z):
            new = vals[layer].clone()
            for h, p in keep.items():
                if h.layer == layer:
                    rows = torch.arange(batch.n)
                    new[rows, batch.pos[p], h.head] = z[rows, batch.pos[p], h.head]
            return new
        return fn
    _, logits = _raw_z(lm.model, batch.ids, batch.mask, {m: f(m) for m in range(3)})
    assert torch.allclose(got[0], batch.metric(logits), atol=1e-4)
    assert torch.allclose(got[1], batch.metric(cache.logits).cpu(), atol=1e-5)  # nothing ablated: unchanged
    roles = {"name_mover": [HeadId(2, 1)], "induction": [HeadId(1, 0)]}
    faith = circuit_faithfulness(lm, batch, roles, vals, n_random=2)
    assert faith["F_circuit"] == pytest.approx(float(got[0].mean()), abs=1e-4)  # the same circuit as above
    assert faith["F_model"] == pytest.approx(float(got[1].mean()), abs=1e-5)
    assert faith["faithfulness"] == pytest.approx(faith["F_circuit"] / faith["F_model"], rel=1e-6)
    assert [c["role"] for c in faith["completeness"]] == ["name_mover", "induction"]
    assert faith["random_circuits"]["n"] == 2


def test_bad_input_is_a_clear_error():
    with pytest.raises(InputError, match="n_fit"):
        IOIRolesConfig(n_fit=1)
    with pytest.raises(InputError, match="floor"):
        IOIRolesConfig(floor=0.0)
    lm = tiny_model("llama-gqa")
    batch = _batch()
    bad = {0: torch.zeros(B + 1, T, 4, lm.geometry.d_head)}
    with pytest.raises(InputError, match="do not fit"), intervening(lm, [TiledMean(heads=(HeadId(0, 0),), values=bad)]):
        PrefixCache(lm, batch.ids, batch.mask)
