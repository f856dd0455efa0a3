"""Token-class and structure detectors (subword merge, rare words, delimiter, block, apostrophe,
interrogation, syntactic, sentiment summarizer, content gatherer, constant): planted heads in a tiny
Llama are found and no other head is, and each score equals a plain-loop oracle computed from the
model's own attention weights (``output_attentions=True``, no headmine capture code)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers.models.llama import modeling_llama

from headmine.capture import CaptureSpec, run_capture
from headmine.core.ids import Site
from headmine.detectors import get_detector
from headmine.detectors.block import block_parts
from headmine.detectors.rare_words import rarest_target
from headmine.detectors.subword_merge import merge_target
from headmine.detectors.syntactic_dependency import relation_table
from headmine.detectors.token_targets import causal_keys
from tests.tiny_models import VOCAB, tiny_model

B, T = 3, 20
PLANT_LAYER, PLANT_HEAD = 1, 2


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama-mha")


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    ids[:, 0] = 0
    return ids


def _mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, T - 4:] = 0  # one padded row
    return mask


def plant(monkeypatch, pattern: torch.Tensor) -> None:
    """Replace head PLANT_HEAD of layer PLANT_LAYER's attention by ``pattern`` [b, T, T] in the real
    forward (its output is recomputed from the planted weights, so downstream layers see it)."""
    orig = modeling_llama.eager_attention_forward

    def forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        out, w = orig(module, query, key, value, attention_mask, scaling, dropout, **kw)
        if module.layer_idx != PLANT_LAYER:
            return out, w
        w = w.clone()
        w[:, PLANT_HEAD] = pattern[:, : w.shape[-2], : w.shape[-1]].to(w)
        v = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        return torch.matmul(w, v).transpose(1, 2).contiguous(), w

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", forward)


def rows_onto(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A pattern putting each row's attention uniformly on its targets (on key 0 where it has none)."""
    m = mask.bool()
    t = target & m[:, None, :] & m[:, :, None]
    a = t.float()
    a[:, :, 0] += (~t.any(-1)).float()
    return a / a.sum(-1, keepdim=True)


def scores(lm, name: str, ids: torch.Tensor, mask: torch.Tensor, meta: dict) -> torch.Tensor:
    det = get_detector(name)
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN})), ids, mask)
    table = det(rec, {**meta, "n_layers": 3, "n_heads": 4})
    return torch.tensor(table.pivot(index="layer", columns="head", values="value").to_numpy())


def raw_attentions(lm, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[b, h, T, T] per layer, straight from the HF forward."""
    with torch.no_grad():
        out = lm.model(input_ids=ids, attention_mask=mask, output_attentions=True)
    return [a.float() for a in out.attentions]


def check_planted(lm, monkeypatch, name: str, ids: torch.Tensor, mask: torch.Tensor, meta: dict,
                  target: torch.Tensor, others_below: float | None = None) -> torch.Tensor:
    """The planted head scores at or above the detector's threshold; every other head below it (or below
    ``others_below`` where a few synthetic sentences leave random heads a wider spread)."""
    plant(monkeypatch, rows_onto(target, mask))
    s = scores(lm, name, ids, mask, meta)
    thr = get_detector(name).threshold
    assert s[PLANT_LAYER, PLANT_HEAD] >= thr, s
    others = s.clone()
    others[PLANT_LAYER, PLANT_HEAD] = float("nan")
    assert (others[~others.isnan()] < (others_below or thr)).all(), s
    return s


def oracle_mean(per_row: Callable[[torch.Tensor, int, int], float | None], attn: list[torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
    """[layer, head]: mean over sequences of the mean over rows of ``per_row(a_row, b, i)`` (None = skip)."""
    out = torch.full((len(attn), attn[0].shape[1]), float("nan"), dtype=torch.float64)
    for layer, a in enumerate(attn):
        for h in range(a.shape[1]):
            seq_vals = []
            for b in range(a.shape[0]):
                vals = [per_row(a[b, h, i], b, i) for i in range(int(mask[b].sum()))]
                vals = [v for v in vals if v is not None]
                if vals:
                    seq_vals.append(sum(vals) / len(vals))
            if seq_vals:
                out[layer, h] = sum(seq_vals) / len(seq_vals)
    return out


# --------------------------------------------------------------------------- subword merge
def word_meta(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(B, T, generator=g) < 0.5
    start[:, 1] = True
    word_id = torch.cumsum(start.long(), 1) - 1
    word_id[:, 0] = -1
    start[:, 0] = False
    return {"word_id": word_id, "word_start": start, "continuation": (word_id >= 0) & ~start}


def test_subword_merge_finds_the_planted_head_and_matches_the_oracle(lm, monkeypatch):
    ids, mask, meta = _ids(), _mask(), word_meta()
    s = check_planted(lm, monkeypatch, "subword_merge", ids, mask, meta,
                      merge_target(meta["word_id"], meta["continuation"]))
    assert s[PLANT_LAYER, PLANT_HEAD] == pytest.approx(1.0, abs=1e-5)
    monkeypatch.undo()

    attn = raw_attentions(lm, ids, mask)
    w, cont, start = meta["word_id"], meta["continuation"], meta["word_start"]

    def merge(row, b, i):
        if not cont[b, i]:
            return None
        den = float(row[1:i + 1].sum())
        return float(sum(row[j] for j in range(1, i) if w[b, j] == w[b, i])) / den

    def prev(row, b, i):
        return float(row[i - 1] / row[1:i + 1].sum()) if i >= 2 and start[b, i] else None

    expect = oracle_mean(merge, attn, mask) - oracle_mean(prev, attn, mask)
    got = scores(lm, "subword_merge", ids, mask, meta)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- rare words, delimiter, block
def test_rare_words_finds_the_planted_head_and_matches_the_oracle(lm, monkeypatch):
    ids, mask = _ids(), _mask()
    rarity = ids.clone()
    rarity[:, 0] = -1
    meta = {"rarity": rarity}
    keys = causal_keys(mask, drop_current=True)
    s = check_planted(lm, monkeypatch, "rare_words", ids, mask, meta, rarest_target(rarity, keys))
    assert s[PLANT_LAYER, PLANT_HEAD] == pytest.approx(1.0)
    monkeypatch.undo()

    def hit(row, b, i):
        cand = list(range(1, i))
        if len(cand) < 2:
            return None
        rarest = max(cand, key=lambda j: (int(rarity[b, j]), j))
        return float(max(cand, key=lambda j: float(row[j])) == rarest)

    expect = oracle_mean(hit, raw_attentions(lm, ids, mask), mask)
    torch.testing.assert_close(scores(lm, "rare_words", ids, mask, meta), expect, atol=1e-9, rtol=0)


def test_delimiter_finds_the_planted_head_not_the_sink_and_matches_the_oracle(lm, monkeypatch):
    ids, mask = _ids(), _mask()
    delim = torch.zeros(B, T, dtype=torch.bool)
    delim[:, [4, 9, 13]] = True
    meta = {"delimiter": delim}
    s = check_planted(lm, monkeypatch, "delimiter", ids, mask, meta,
                      causal_keys(mask, drop_current=True) & delim[:, None, :])
    assert s[PLANT_LAYER, PLANT_HEAD] == pytest.approx(1.0)
    # a pure sink head (everything on key 0) is not a delimiter head: no attention on real keys, no score
    plant(monkeypatch, rows_onto(torch.zeros(B, T, T, dtype=torch.bool), mask))
    assert torch.isnan(scores(lm, "delimiter", ids, mask, meta)[PLANT_LAYER, PLANT_HEAD])
    monkeypatch.undo()

    def frac(row, b, i):
        if not delim[b, 1:i].any():
            return None
        return float(sum(row[j] for j in range(1, i) if delim[b, j]) / row[1:i].sum())

    expect = oracle_mean(frac, raw_attentions(lm, ids, mask), mask)
    torch.testing.assert_close(scores(lm, "delimiter", ids, mask, meta), expect, atol=1e-5, rtol=0)


def test_block_finds_the_planted_head_not_a_previous_token_head_and_matches_the_oracle(lm, monkeypatch):
    ids, mask = _ids(), _mask()
    sid = torch.tensor([0] * 6 + [1] * 7 + [2] * 7).expand(B, T).clone()
    sid[:, 0] = -1
    meta = {"sentence_id": sid}
    target = block_parts(sid, mask)[0]
    s = check_planted(lm, monkeypatch, "block", ids, mask, meta, target)
    assert s[PLANT_LAYER, PLANT_HEAD] > 0.5
    prev = torch.zeros(B, T, T, dtype=torch.bool)
    prev[:, torch.arange(1, T), torch.arange(T - 1)] = True
    plant(monkeypatch, rows_onto(prev, mask))  # local heads stay in the sentence trivially: not block heads
    assert not scores(lm, "block", ids, mask, meta)[PLANT_LAYER, PLANT_HEAD] >= 0.3
    monkeypatch.undo()

    def lift(row, b, i):
        allowed = list(range(1, i - 1))
        same = [j for j in allowed if sid[b, j] == sid[b, i]]
        if sid[b, i] <= 0 or not same:
            return None
        return float(sum(row[j] for j in same) / sum(row[j] for j in allowed)) - len(same) / len(allowed)

    expect = oracle_mean(lift, raw_attentions(lm, ids, mask), mask)
    torch.testing.assert_close(scores(lm, "block", ids, mask, meta), expect, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- apostrophe, interrogation
def test_apostrophe_and_interrogation_find_planted_heads_and_match_the_oracle(lm, monkeypatch):
    ids, mask = _ids(), _mask()
    flag = torch.zeros(B, T, dtype=torch.bool)
    flag[:, [3, 8, 14]] = True
    keys = causal_keys(mask, drop_current=True)
    check_planted(lm, monkeypatch, "apostrophe", ids, mask, {"apostrophe": flag}, keys & flag[:, None, :])
    sid = torch.tensor([0] * 10 + [1] * 10).expand(B, T).clone()
    meta = {"interrogative": flag, "sentence_id": sid}
    same = sid[:, :, None] == sid[:, None, :]
    check_planted(lm, monkeypatch, "interrogation", ids, mask, meta, keys & same & flag[:, None, :])
    monkeypatch.undo()
    attn = raw_attentions(lm, ids, mask)

    def frac(row, b, i, same_sentence=False):
        js = [j for j in range(1, i) if flag[b, j] and (not same_sentence or sid[b, j] == sid[b, i])]
        return float(sum(row[j] for j in js) / row[1:i].sum()) if js else None

    torch.testing.assert_close(scores(lm, "apostrophe", ids, mask, {"apostrophe": flag}),
                               oracle_mean(frac, attn, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(scores(lm, "interrogation", ids, mask, meta),
                               oracle_mean(lambda r, b, i: frac(r, b, i, True), attn, mask), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- syntax
def syntax_meta() -> dict:
    """Three sentences of 6-9 words (1-3 tokens each) with hand-made arcs (dependent, head, relation)."""
    g = torch.Generator().manual_seed(3)
    word_of_token = torch.full((B, T), -1, dtype=torch.long)
    arcs = []
    for b in range(B):
        t, w = 1, 0
        while t < int(_mask()[b].sum()):
            k = int(torch.randint(1, 3, (1,), generator=g))
            word_of_token[b, t:t + k] = w
            t, w = t + k, w + 1
        n_words = int(word_of_token[b].max()) + 1
        heads = [int(torch.randint(0, max(1, d), (1,), generator=g)) if d else -1 for d in range(n_words)]
        arcs.append([(d, heads[d], "det" if d % 2 else "obj") for d in range(1, n_words)])
    return {"word_of_token": word_of_token, "arcs": arcs, "relation_baseline": (("det", 0.2), ("obj", 0.3))}


def word_level(a: torch.Tensor, wot: torch.Tensor) -> list[list[float]]:
    n = int(wot.max()) + 1
    toks = [[t for t in range(len(wot)) if wot[t] == w] for w in range(n)]
    return [[float(sum(a[q, k] for q in toks[w] for k in toks[v]) / len(toks[w])) for v in range(n)] for w in range(n)]


def test_syntactic_detectors_find_a_planted_arc_head_and_match_the_oracle(lm, monkeypatch):
    ids, mask, meta = _ids(), _mask(), syntax_meta()
    wot = meta["word_of_token"]
    target = torch.zeros(B, T, T, dtype=torch.bool)
    for b, row in enumerate(meta["arcs"]):
        partner = {max(d, h): min(d, h) for d, h, _ in row}
        for i in range(T):
            w = int(wot[b, i])
            if w in partner:
                target[b, i] = wot[b] == partner[w]
    s = check_planted(lm, monkeypatch, "syntactic", ids, mask, meta, target, others_below=0.25)
    d = check_planted(lm, monkeypatch, "syntactic_dependency", ids, mask, meta, target, others_below=0.25)
    assert d[PLANT_LAYER, PLANT_HEAD] == pytest.approx(0.8) and s[PLANT_LAYER, PLANT_HEAD] > 0.3
    monkeypatch.undo()

    attn = raw_attentions(lm, ids, mask)
    expect = torch.full((3, 4), float("nan"), dtype=torch.float64)
    per_rel = {}
    for layer, a in enumerate(attn):
        for h in range(4):
            seq, hits = [], {"det": [], "obj": []}
            for b, row in enumerate(meta["arcs"]):
                n = int(wot[b].max()) + 1
                wa = word_level(a[b, h, : int(mask[b].sum()), : int(mask[b].sum())], wot[b, : int(mask[b].sum())])
                top = {w: max(range(w), key=lambda v: wa[w][v]) for w in range(1, n)}
                nb = {}
                for dd, hh, rel in row:
                    nb.setdefault(max(dd, hh), set()).add(min(dd, hh))
                    hits[rel].append(float(top[max(dd, hh)] == min(dd, hh)))
                seq.append(sum(float(top[w] in nb[w]) - float(w - 1 in nb[w]) for w in nb) / len(nb))
            expect[layer, h] = sum(seq) / len(seq)
            per_rel[layer, h] = {rel: sum(v) / len(v) for rel, v in hits.items()}
    torch.testing.assert_close(scores(lm, "syntactic", ids, mask, meta), expect, atol=1e-9, rtol=0)
    rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN})), ids, mask)
    table = relation_table(rec, meta)
    for (layer, h), rels in per_rel.items():
        for rel, acc in rels.items():
            assert float(table[layer][rel][h]) == pytest.approx(acc)
