"""Detectors C (issue 14 §3): CMR-like heads (attention by lag fitted by the CMR model of episodic memory),
letter mover heads (acronyms) and negative heads (negative attention score on yes/no instructions).
Planted patterns: one head with the type's pattern among distractors, the detector labels it alone. Oracles:
scores on a tiny random Llama recomputed from HF's own attention weights with plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors import get_detector
from headmine.detectors.cmr_like import LAGS, lag_profiles
from headmine.detectors.cmr_model import MAX_LAG, cmr_distance, crp_table, simulate_crp
from headmine.tasks import PROBES
from tests.tiny_models import hf_attentions, tiny_model


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2.tokenizer


def causal_uniform(t: int) -> torch.Tensor:
    return torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]


def record_of(batch, heads: list[torch.Tensor]) -> CaptureRecord:
    """Layer 0 holds the given [B, T, T] (or [T, T]) patterns as heads 0, 1, ..."""
    b, t = batch.input_ids.shape
    a = torch.stack([h.expand(b, t, t) for h in heads], 1).clone()
    return CaptureRecord(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         heads={0: list(range(len(heads)))}, pattern={0: a})


def labelled(name: str, rec: CaptureRecord, meta) -> list[int]:
    det = get_detector(name)
    df = det(rec, meta)
    return sorted(int(h) for h in df[df.value >= det.threshold]["head"])


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama-mha")


# --------------------------------------------------------------------------- CMR model
def test_cmr_chaining_recalls_the_next_item_every_time() -> None:
    """beta_enc = beta_rec = 1, gamma_ft = 0 is pure chaining (the paper's Fig. 4b left): lag +1 only."""
    crp = simulate_crp(1.0, [(1.0, 0.0)], n_sim=5)[0]
    want = np.zeros(2 * MAX_LAG + 1)
    want[MAX_LAG + 1] = 1.0
    assert np.allclose(crp, want)
    # moderate drift gives the human-like forward-asymmetric contiguity (Fig. 4b right): +1 > -1, peak at +1
    human = simulate_crp(0.7, [(0.7, 0.0)], n_sim=50)[0]
    assert human.argmax() == MAX_LAG + 1 and human[MAX_LAG + 1] > 2 * human[MAX_LAG - 1]


def test_shipped_crp_table_is_the_grid() -> None:
    params, crps = crp_table()
    assert params.shape == (10 * 11 * 5, 3) and crps.shape == (550, 2 * MAX_LAG + 1)
    assert np.allclose(crps.sum(1), 1.0, atol=1e-4)
    chain = np.nonzero((params == [1.0, 1.0, 0.0]).all(1))[0][0]
    assert crps[chain].argmax() == MAX_LAG + 1 and crps[chain, MAX_LAG + 1] > 0.99


def test_cmr_distance_follows_its_definition() -> None:
    _, crps = crp_table()
    # a table row, shifted and scaled like any attention profile, is fitted exactly
    d, best = cmr_distance(0.02 + 0.3 * crps[123])
    assert d == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(crps[best] - crps[best].min(), (crps[123] - crps[123].min()) * 1.0, atol=1e-12) or best == 123
    # brute force on a noisy profile: min over rows of the variance-normalised MSE of the rescaled CRP
    g = np.random.default_rng(0)
    prof = np.abs(g.normal(size=2 * MAX_LAG + 1)) * 0.05
    prof[MAX_LAG + 1] += 0.4
    a = prof - prof.min()
    want = min(float(np.mean(((c - c.min()) * a.max() / (c - c.min()).max() - a) ** 2) / a.var()) for c in crps)
    assert cmr_distance(prof)[0] == pytest.approx(want, rel=1e-9)
    # flat or broken profiles have no shape to fit
    assert math.isnan(cmr_distance(np.full(2 * MAX_LAG + 1, 0.1))[0])
    assert math.isnan(cmr_distance(np.full(2 * MAX_LAG + 1, np.nan))[0])
    with pytest.raises(DetectorError):
        cmr_distance(np.zeros(4))


def lag_pattern(batch, lag_weights: dict[int, float]) -> torch.Tensor:
    """[B, T, T]: second-copy queries put the given weights on first-copy lags, the rest on key 0."""
    b, t = batch.input_ids.shape
    seq_len, start = batch.meta["seq_len"], batch.meta["block_starts"][0]
    a = causal_uniform(t).expand(b, t, t).clone()
    for q in range(start + seq_len, t):
        i = q - start - seq_len
        a[:, q] = 0.0
        for lag, w in lag_weights.items():
            if 0 <= i + lag < seq_len:
                a[:, q, start + i + lag] = w
        a[:, q, 0] += 1.0 - a[:, q].sum(-1)
    return a


def test_cmr_like_finds_the_induction_shaped_head_only(tok) -> None:
    batch = PROBES.get("repeated_tokens").build(tok, n=3, seq_len=20)
    t = batch.input_ids.shape[1]
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(t - 1)] = 1
    first = torch.zeros(t, t)
    first[:, 0] = 1
    heads = [
        lag_pattern(batch, {1: 0.3, 2: 0.06, 0: 0.05, -1: 0.02}),  # CMR-like: forward contiguity around +1
        lag_pattern(batch, {-3: 0.4, 4: 0.3}),  # attends the first copy at lags CMR never favours
        causal_uniform(t), prev, first,  # no shape over the first copy
    ]
    rec = record_of(batch, heads)
    assert labelled("cmr_like", rec, batch.meta) == [0]
    df = get_detector("cmr_like")(rec, batch.meta)
    assert df[df["head"] == 0].value.item() > 0.9 and df[df["head"] == 1].value.item() < 0.5
    with pytest.raises(DetectorError, match="repeated_tokens"):
        get_detector("cmr_like")(rec, {})


def test_lag_profiles_match_a_loop_oracle(tiny) -> None:
    g = torch.Generator().manual_seed(0)
    seq_len = 14
    r = torch.randint(5, 90, (2, seq_len), generator=g)
    ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), r, r], 1)
    meta = {"seq_len": seq_len, "block_starts": (1, 1 + seq_len)}
    rec = run_capture(tiny, CaptureSpec(sites={Site.PATTERN}), ids)
    att = hf_attentions(tiny, ids)
    profiles = lag_profiles(rec, meta)
    df = get_detector("cmr_like")(rec, meta)
    for layer in range(3):
        for head in range(4):
            fits = []
            for b in range(2):
                rows = [[float(att[layer][b, head, 1 + seq_len + i, 1 + i + lag]) for lag in LAGS]
                        for i in range(MAX_LAG, seq_len - MAX_LAG)]
                want = np.mean(rows, 0)
                assert np.allclose(profiles[layer][b, head].numpy(), want, atol=1e-6)
                fits.append(1 - cmr_distance(want)[0])
            got = df[(df.layer == layer) & (df["head"] == head)].value.item()
            assert got == pytest.approx(float(np.mean(fits)), abs=1e-4)  # profiles are float32


# --------------------------------------------------------------------------- letter mover
def test_acronym_prompts_spell_their_words(tok) -> None:
    batch = PROBES.get("acronyms").build(tok, n=4, seed=1)
    for row, words, letters, queries in zip(batch.input_ids, batch.meta["word_pos"], batch.meta["letter_pos"],
                                            batch.meta["query_pos"], strict=True):
        initials = [tok.decode([int(row[p])]).strip()[0] for p in words]
        assert [tok.decode([int(row[p])]) for p in letters] == initials
        assert len(set(initials)) == 3
        assert tok.decode([int(row[queries[0]])]).strip() == "("
        assert queries[1:].tolist() == letters[:2].tolist()
    assert torch.equal(batch.input_ids, PROBES.get("acronyms").build(tok, n=4, seed=1).input_ids)


def test_letter_mover_finds_the_planted_head_only(tok) -> None:
    batch = PROBES.get("acronyms").build(tok, n=4)
    b, t = batch.input_ids.shape
    mover = causal_uniform(t).expand(b, t, t).clone()
    same_word = mover.clone()  # attends the FIRST word from every letter position
    for k in range(3):
        for i in range(b):
            q = int(batch.meta["query_pos"][i, k])
            mover[i, q] = 0.0
            mover[i, q, 0], mover[i, q, int(batch.meta["word_pos"][i, k])] = 0.4, 0.6
            same_word[i, q] = 0.0
            same_word[i, q, 0], same_word[i, q, int(batch.meta["word_pos"][i, 0])] = 0.4, 0.6
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(t - 1)] = 1
    rec = record_of(batch, [mover, same_word, prev, causal_uniform(t)])
    assert labelled("letter_mover", rec, batch.meta) == [0]
    df = get_detector("letter_mover")(rec, batch.meta)
    assert df[df["head"] == 0].value.item() == pytest.approx(1.0)
    assert df[df["head"] == 1].value.item() == pytest.approx(1 / 3)


def test_letter_mover_score_matches_a_loop_oracle(tiny) -> None:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (2, 18), generator=g)
    meta = {"word_pos": torch.tensor([[3, 4, 5], [6, 7, 8]]), "query_pos": torch.tensor([[10, 11, 12], [13, 14, 15]])}
    rec = run_capture(tiny, CaptureSpec(sites={Site.PATTERN}), ids)
    att = hf_attentions(tiny, ids)
    df = get_detector("letter_mover")(rec, meta)
    for layer in range(3):
        for head in range(4):
            per = []
            for b in range(2):
                rows = [att[layer][b, head, int(q)] for q in meta["query_pos"][b]]
                num = sum(float(row[int(w)]) for row, w in zip(rows, meta["word_pos"][b], strict=True))
                per.append(num / sum(float(row[1:].sum()) for row in rows))
            got = df[(df.layer == layer) & (df["head"] == head)].value.item()
            assert got == pytest.approx(sum(per) / 2, abs=1e-5)


# --------------------------------------------------------------------------- negative heads
def test_yes_no_prompts_are_balanced_and_alternate_the_options(tok) -> None:
    batch = PROBES.get("yes_no").build(tok, n=8, seed=0)
    for row, y, n in zip(batch.input_ids, batch.meta["yes_pos"], batch.meta["no_pos"], strict=True):
        assert tok.decode([int(row[y])]) == " Yes" and tok.decode([int(row[n])]) == " No"
    no_second = (batch.meta["no_pos"] > batch.meta["yes_pos"]).tolist()
    assert no_second == [True, False] * 4
    assert all(text.endswith("Answer:") for text in batch.texts)
    from headmine.tasks.yes_no import yes_no_items

    items = yes_no_items()
    assert sum(no for _, no in items) * 2 == len(items)


def option_pattern(batch, yes: float, no: float, *, second: float | None = None) -> torch.Tensor:
    """Causal uniform, except the last token: ``yes``/``no`` on the options (or ``second`` on whichever option
    comes second), the rest on key 0."""
    b, t = batch.input_ids.shape
    a = causal_uniform(t).expand(b, t, t).clone()
    for i in range(b):
        end = int(batch.meta["end_pos"][i])
        y, n = int(batch.meta["yes_pos"][i]), int(batch.meta["no_pos"][i])
        a[i, end] = 0.0
        if second is not None:
            a[i, end, max(y, n)] = second
        else:
            a[i, end, y], a[i, end, n] = yes, no
        a[i, end, 0] = 1.0 - a[i, end].sum()
    return a


def test_negative_head_finds_the_no_attending_head_only(tok) -> None:
    batch = PROBES.get("yes_no").build(tok, n=6)
    t = batch.input_ids.shape[1]
    heads = [option_pattern(batch, 0.05, 0.5), option_pattern(batch, 0.5, 0.05),
             option_pattern(batch, 0.0, 0.0, second=0.5), causal_uniform(t)]
    rec = record_of(batch, heads)
    assert labelled("negative_head", rec, batch.meta) == [0]
    df = get_detector("negative_head")(rec, batch.meta).set_index("head").value
    assert df[0] == pytest.approx(0.55 * math.log((0.5 + 1e-6) / (0.05 + 1e-6)), rel=1e-6)
    assert df[1] == pytest.approx(-df[0], rel=1e-6)  # a positive head: the same score, negated
    assert abs(df[2]) < 0.1  # attends the second option: "No" in half the prompts, "Yes" in the other half
    with pytest.raises(DetectorError, match="yes_pos"):
        get_detector("negative_head")(rec, {})


def test_negative_attention_score_matches_a_loop_oracle(tiny) -> None:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 97, (3, 15), generator=g)
    meta = {"yes_pos": torch.tensor([4, 7, 2]), "no_pos": torch.tensor([6, 5, 9])}
    rec = run_capture(tiny, CaptureSpec(sites={Site.PATTERN}), ids)
    att = hf_attentions(tiny, ids)
    df = get_detector("negative_head")(rec, meta)
    for layer in range(3):
        for head in range(4):
            want = 0.0
            for b in range(3):
                pos = float(att[layer][b, head, 14, int(meta["yes_pos"][b])])
                neg = float(att[layer][b, head, 14, int(meta["no_pos"][b])])
                want += (pos + neg) * math.log((neg + 1e-6) / (pos + 1e-6)) / 3
            got = df[(df.layer == layer) & (df["head"] == head)].value.item()
            assert got == pytest.approx(want, abs=1e-5)


def test_cmr_like_on_copies_too_short_for_the_lags_scores_nothing(tiny) -> None:
    """A copy shorter than the 11 lags leaves no eligible query: NaN everywhere, no error (a default scan goes on)."""
    r = torch.arange(5, 11)[None]
    ids = torch.cat([torch.zeros(1, 1, dtype=torch.long), r, r], 1)
    rec = run_capture(tiny, CaptureSpec(sites={Site.PATTERN}), ids)
    assert get_detector("cmr_like")(rec, {"seq_len": 6, "block_starts": (1, 7)}).value.isna().all()
