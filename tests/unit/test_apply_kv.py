"""``headmine kv``: the mixed KV cache equals the plain model when every head is full (bit for bit), equals
an explicit per-head masked-attention oracle otherwise (forward and KV-cached generate), retrieval
scoring finds a head planted by swapping weights, the artifact round-trips and applies during
generate, the CLI runs, and bad input is refused clearly."""

from __future__ import annotations

import math

import pytest
import torch
import typer
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from typer.testing import CliRunner

from headmine.apply import HeadArtifact, applied
from headmine.apply.kv import (
    KVConfig,
    KVPolicy,
    kv_head_scores,
    kv_memory,
    mixed_cache,
    needle_correct,
    policy_for,
    retrieval_scores,
    run_kv,
    streaming_allowed,
)
from headmine.apply.kv_cache import cache_bytes
from headmine.capture.hooks import attention_implementation, count_hooks
from headmine.cli import kv as kv_cli
from headmine.core.errors import InputError
from headmine.tasks.base import TokenBatch
from tests.tiny_models import tiny_model


def _policy(lm, full_pairs, sink=2, recent=3) -> KVPolicy:
    g = lm.geometry
    full = torch.zeros(g.n_layers, g.n_kv_heads, dtype=torch.bool)
    for layer, kv in full_pairs:
        full[layer, kv] = True
    return KVPolicy(full, sink=sink, recent=recent)


# --------------------------------------------------------------------------- the oracle
_ORACLE: dict = {}


def _oracle_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """Per head, per query: softmax over an explicitly listed set of keys (loops, no masks)."""
    pol, mask2d = _ORACLE["policy"], _ORACLE["mask"]
    b, n_heads, tq, d = query.shape
    tk, n_kv = key.shape[2], key.shape[1]
    group = n_heads // n_kv
    out = torch.zeros(b, tq, n_heads, d, dtype=query.dtype)
    for row in range(b):
        real_keys = [j for j in range(tk) if mask2d[row, j]]
        rank = {j: r for r, j in enumerate(real_keys)}
        for h in range(n_heads):
            full = bool(pol.full[module.layer_idx, h // group])
            for i in range(tq):
                qpos = tk - tq + i
                if qpos not in rank:
                    continue  # a padding query: its output is never read
                keys = [j for j in real_keys if j <= qpos and (full or rank[j] < pol.sink or rank[j] > rank[qpos] - pol.recent)]
                s = torch.stack([query[row, h, i] @ key[row, h // group, j] for j in keys]) * kwargs["scaling"]
                w = torch.softmax(s, 0)
                out[row, i, h] = sum(w[n] * value[row, h // group, j] for n, j in enumerate(keys))
    return out, None


AttentionInterface.register("test_kv_oracle", _oracle_attention)
AttentionMaskInterface.register("test_kv_oracle", ALL_MASK_ATTENTION_FUNCTIONS["eager"])


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama-gqa")


def _ids():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_all_full_is_the_plain_model_bit_for_bit(lm, impl) -> None:
    ids, mask = _ids()
    g = lm.geometry
    with attention_implementation(lm.model, impl), torch.no_grad():
        base = lm.model(input_ids=ids, attention_mask=mask).logits
        with mixed_cache(lm, KVPolicy(torch.ones(g.n_layers, g.n_kv_heads, dtype=torch.bool), sink=1, recent=2)):
            same = lm.model(input_ids=ids, attention_mask=mask).logits
        streaming = _policy(lm, [(0, 1)])
        with mixed_cache(lm, streaming):
            mixed = lm.model(input_ids=ids, attention_mask=mask).logits
        assert lm.model.config._attn_implementation == impl and count_hooks(lm.model) == 0  # restored
    assert torch.equal(base, same)
    assert (mixed - base).abs().max() > 1e-3  # streaming heads do change the output here


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_mixed_cache_equals_the_per_head_oracle(lm, impl) -> None:
    ids, mask = _ids()
    pol = _policy(lm, [(0, 1), (2, 0)], sink=2, recent=3)
    _ORACLE.update(policy=pol, mask=mask.bool())
    with torch.no_grad():
        with attention_implementation(lm.model, "test_kv_oracle"):
            want = lm.model(input_ids=ids, attention_mask=mask).logits
        with attention_implementation(lm.model, impl), mixed_cache(lm, pol):
            got = lm.model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(got[real], want[real], atol=1e-5), (got[real] - want[real]).abs().max()


def test_generate_under_the_mixed_cache_equals_the_oracle(lm) -> None:
    """KV-cached decoding (each step one query against the cache) gives the oracle's logits of the whole
    sequence: the mask keeps exactly what a cache evicting the middle would keep."""
    ids, mask = _ids()
    pol = _policy(lm, [(1, 0)], sink=1, recent=4)
    with torch.no_grad(), mixed_cache(lm, pol):
        out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                                output_scores=True, return_dict_in_generate=True)
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, 5, dtype=mask.dtype)], 1)
    _ORACLE.update(policy=pol, mask=full_mask.bool())
    with torch.no_grad(), attention_implementation(lm.model, "test_kv_oracle"):
        want = lm.model(input_ids=seq, attention_mask=full_mask).logits
    scores = torch.stack(out.scores, 1)  # [2, 5, V]
    assert torch.allclose(scores, want[:, ids.shape[1] - 1:-1], atol=1e-5)


def _generate_pair(model, pol, ids, mask, new: int):
    """Greedy generate under the masked mixed cache and under the compact one; returns both outputs and caches."""
    from transformers import DynamicCache

    kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    outs, caches = [], []
    for compact in (False, True):
        cache = DynamicCache(config=model.model.config)
        with torch.no_grad(), mixed_cache(model, pol, compact=compact):
            outs.append(model.model.generate(input_ids=ids, attention_mask=mask, cache=cache, **kw))
        caches.append(cache)
    return outs, caches


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_compact_cache_equals_the_masked_one_and_stores_only_sink_and_recent(lm, impl) -> None:
    """Under generate the compact cache gives the masked cache's tokens and scores (1e-6), and holds, per
    streaming KV head and row, exactly sink + recent tokens: measured bytes = the hand count."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (2, 30), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    pol = _policy(lm, [(1, 0)], sink=2, recent=5)
    with attention_implementation(lm.model, impl):
        (masked, compact), (c_masked, c_compact) = _generate_pair(lm, pol, ids, mask, 12)
    assert torch.equal(masked.sequences, compact.sequences)
    assert torch.allclose(torch.stack(masked.scores), torch.stack(compact.scores), atol=1e-6, rtol=0)
    assert [type(layer).__name__ for layer in c_compact.layers] == ["CompactLayer"] * 3
    geo, cached = lm.geometry, 30 + 12 - 1
    unit = 2 * geo.d_head * 2 * 4  # 2 rows, K and V, float32
    assert cache_bytes(c_masked) == {"kv_bytes": cached * geo.n_layers * geo.n_kv_heads * unit, "meta_bytes": 0}
    kept = cached * 1 + (2 + 5) * (geo.n_layers * geo.n_kv_heads - 1)  # one full KV head, the rest sink + recent
    assert cache_bytes(c_compact)["kv_bytes"] == kept * unit


def test_compact_cache_on_sliding_window_layers() -> None:
    """Gemma 3 (tiny, window 4, MQA): masked generate equals the teacher-forced masked forward (the keys of a
    window cache are the LAST positions), the compact cache equals the masked one, a layer with every
    head full keeps its own sliding-window layer, and the compact cache holds fewer bytes."""
    from headmine.apply.kv_cache import CompactLayer

    model = tiny_model("gemma3-mqa")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    pol = _policy(model, [(1, 0)], sink=1, recent=2)
    (masked, compact), (c_masked, c_compact) = _generate_pair(model, pol, ids, mask, 8)
    full_mask = torch.cat([mask, torch.ones(2, 8, dtype=mask.dtype)], 1)
    with torch.no_grad(), mixed_cache(model, pol):
        want = model.model(input_ids=masked.sequences, attention_mask=full_mask, use_cache=False).logits
    assert torch.allclose(torch.stack(masked.scores, 1), want[:, ids.shape[1] - 1:-1], atol=1e-5)
    assert torch.equal(masked.sequences, compact.sequences)
    assert torch.allclose(torch.stack(masked.scores), torch.stack(compact.scores), atol=1e-6, rtol=0)
    assert [isinstance(layer, CompactLayer) for layer in c_compact.layers] == [True, False, True]
    assert cache_bytes(c_compact)["kv_bytes"] < cache_bytes(c_masked)["kv_bytes"]


def test_streaming_rule_and_memory(lm) -> None:
    valid = torch.tensor([[False, True, True, True, True, True, True]])
    allowed = streaming_allowed(valid, 7, sink=1, recent=2)[0, 0]  # [7 queries, 7 keys]
    # the last query (real index 5) keeps the sink (real 0 = position 1) and real 4, 5 (positions 5, 6)
    assert allowed[6].tolist() == [False, True, False, False, False, True, True]
    pol = _policy(lm, [(0, 0)], sink=2, recent=3)
    mem = kv_memory(lm, pol, 20)
    g = lm.geometry
    per = g.d_head * 2 * 4  # float32 K and V
    assert mem["kv_bytes_full"] == 20 * g.n_layers * g.n_kv_heads * per
    assert mem["kv_bytes"] == (20 + 5 * (g.n_layers * g.n_kv_heads - 1)) * per
    assert math.isclose(mem["kv_kept_share"], mem["kv_bytes"] / mem["kv_bytes_full"])
    with pytest.raises(InputError, match="layers x KV heads"), mixed_cache(lm, KVPolicy(torch.ones(2, 2).bool())):
        pass
    with pytest.raises(InputError, match="sink"):
        KVPolicy(torch.ones(3, 2).bool(), sink=-1)


def test_gqa_max_and_policy_ties() -> None:
    s = torch.tensor([[0.0, 0.3, 0.0, 0.0], [0.2, 0.0, 0.0, 0.05]])
    kv = kv_head_scores(s, 2)
    assert torch.allclose(kv, torch.tensor([[0.3, 0.0], [0.2, 0.05]]))
    pol = policy_for(kv, 2, sink=1, recent=1)
    assert pol.full.tolist() == [[True, False], [True, False]]


# --------------------------------------------------------------------------- planted retrieval head
def _swap_heads(lm, layer: int, a: int, b: int) -> None:
    """Exchange query heads a and b of ``layer`` (q, k, v rows and o_proj columns; the toy is MHA): an
    equivalent model in which head b does what head a did."""
    d = lm.geometry.d_head
    attn = lm.adapter.attention(layer)
    with torch.no_grad():
        for lin, axis in ((attn.q_proj, 0), (attn.k_proj, 0), (attn.v_proj, 0), (attn.o_proj, 1)):
            w = lin.weight
            ia, ib = torch.arange(a * d, (a + 1) * d), torch.arange(b * d, (b + 1) * d)
            wa, wb = w.index_select(axis, ia).clone(), w.index_select(axis, ib).clone()
            w.index_copy_(axis, ia, wb)
            w.index_copy_(axis, ib, wa)


def _recall_batch(tok, n: int = 6, seed: int = 0) -> TokenBatch:
    """BOS + 30 distinct random tokens (haystack) + the two tokens before a 3-token answer span: the answer
    is recalled from the haystack (what the toy's induction heads do)."""
    g = torch.Generator().manual_seed(seed)
    rows, spans, answers = [], [], []
    for _ in range(n):
        hay = (4 + torch.randperm(60, generator=g)[:30]).tolist()
        start = int(torch.randint(3, 20, (1,), generator=g))
        rows.append([tok.bos_token_id, *hay, hay[start - 2], hay[start - 1]])
        spans.append((1 + start, 1 + start + 3))
        answers.append(tuple(hay[start:start + 3]))
    ids = torch.tensor(rows)
    return TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), task="recall",
                      meta={"answer_ids": answers, "answer_span": torch.tensor(spans)})


def test_planted_retrieval_head_is_found_and_needed() -> None:
    """The toy's induction heads are L1H0 and L1H2; swapping L1H2 with the irrelevant L1H1 plants the
    retrieval head at L1H1. Scoring finds L1H0 and L1H1 (not L1H2), and a cache that keeps only those
    two heads full still recalls, while keeping the other two layer-1 heads full does not."""
    from headmine.models.loading import load_model

    toy = load_model("toy-induction")
    _swap_heads(toy, 1, 2, 1)
    batch = _recall_batch(toy.tokenizer)
    rows = list(range(len(batch)))
    scores, n_ok = retrieval_scores(toy, batch, rows)
    assert n_ok >= 4
    top = {(int(i) // 4, int(i) % 4) for i in torch.argsort(scores.flatten(), descending=True)[:2]}
    assert top == {(1, 0), (1, 1)}, scores
    assert float(scores[1, 2]) < 0.1 < float(scores[1, 1])
    found = policy_for(kv_head_scores(scores, 4), 2, sink=1, recent=2)
    others = _policy(toy, [(1, 2), (1, 3)], sink=1, recent=2)
    assert needle_correct(toy, batch, rows, None).mean() >= 0.66
    assert needle_correct(toy, batch, rows, found).mean() >= needle_correct(toy, batch, rows, None).mean() - 0.2
    assert needle_correct(toy, batch, rows, others).mean() <= 0.2


# --------------------------------------------------------------------------- artifact, CLI, errors
def test_artifact_round_trip_and_generate(tmp_path) -> None:
    from headmine.apply.artifact import geometry_of
    from headmine.models.loading import load_model

    toy = load_model("toy-induction")
    pol = _policy(toy, [(1, 0), (1, 2)], sink=1, recent=3)
    art = HeadArtifact(kind="kv", model=toy.name, geometry=geometry_of(toy.geometry),
                       params={"sink": 1, "recent": 3}, tensors={"full": pol.full.float()})
    art.save(tmp_path / "kv")
    back = HeadArtifact.load(tmp_path / "kv.json", kind="kv")
    batch = _recall_batch(toy.tokenizer, n=2)
    ids = batch.input_ids
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        with applied(toy, back):
            a = toy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        with mixed_cache(toy, pol):
            b = toy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        plain = toy.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert torch.equal(torch.stack(a.scores), torch.stack(b.scores))
    assert not torch.equal(torch.stack(a.scores), torch.stack(plain.scores))
    bad = HeadArtifact(kind="kv", model="x", geometry=geometry_of(toy.geometry), params={"sink": 1, "recent": 3})
    with pytest.raises(InputError, match="no 'full'"), applied(toy, bad):
        pass


def test_cli_runs_and_refuses_bad_input(tmp_path) -> None:
    app = typer.Typer()
    kv_cli.register(app)

    @app.command()
    def other() -> None:  # a second command keeps typer from collapsing the app into one
        pass

    runner = CliRunner()
    res = runner.invoke(app, ["kv", "toy-induction", "--n", "2", "--lengths", "48", "--budgets", "0.5",
                              "--random-draws", "1", "--sink", "1", "--recent", "4", "--atlas", str(tmp_path / "a.db"),
                              "--save", str(tmp_path / "kv")], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "needle accuracy" in res.output and "MEASURED under generate" in res.output and (tmp_path / "kv.json").is_file() and (tmp_path / "a.db").is_file()
    bad = runner.invoke(app, ["kv", "toy-induction", "--budgets", "1.5"])
    assert bad.exit_code != 0 and "budget 1.5" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["kv", "toy-induction", "--lengths", "abc"])
    assert bad.exit_code != 0 and "--lengths" in bad.output
    with pytest.raises(InputError, match="cannot be split"):
        KVConfig(n=1)


@pytest.mark.slow
def test_smollm2_retrieval_heads_beat_random_heads(smollm2) -> None:
    """Two needles at 256 tokens (one fit, one held out): the full cache retrieves, a cache with no full
    head does not, and the retrieval heads (25% of KV heads) keep at least what random heads keep."""
    res, art = run_kv(smollm2, KVConfig(n=2, context_lengths=(256,), depths=(0.5,), budgets=(0.25,), n_random=1,
                                        sink=8, recent=32))
    rows = {r["condition"]: r for r in res.tables["needle accuracy (held-out needles)"]}
    assert rows["256 tok: full cache"]["value"] == 1.0
    assert rows["256 tok: no head full"]["value"] == 0.0
    chosen = rows["256 tok: retrieval heads full, budget 0.25"]
    assert chosen["value"] >= rows["256 tok: random heads full, budget 0.25"]["value"]
    assert chosen["kv_kept_share"] < 0.5
    assert res.chosen["fit_needles_retrieved"] == 1 and art.tensors["full"].sum() == 45
