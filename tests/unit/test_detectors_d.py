"""Detectors D (issue 14 §3): constituency grammar inducing heads, sentiment summarizers and summary readers.

Pure parts are checked on hand-worked sentences (gold spans from a dependency tree, the greedy split, the
F1); planted heads in a tiny Llama are found and no other head is; each score equals a plain-loop oracle
computed from the model's own attention weights (``output_attentions=True``, no headmine capture code).
The sentiment task is checked on SmolLM2's tokenizer; the baseline numbers quoted in
``headmine.detectors.constituency`` (and its threshold) are re-derived from the packaged treebank.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch

from headmine.core.errors import DetectorError
from headmine.detectors import get_detector
from headmine.detectors.constituency import (
    MARGIN,
    gold_spans,
    greedy_spans,
    kept_words,
    right_branching_spans,
    span_f1,
)
from headmine.tasks.sentiment import ANSWERS, sentiment
from headmine.tasks.treebank import treebank_sentences
from tests.tiny_models import VOCAB, tiny_model
from tests.unit.test_detectors_token_class import (
    PLANT_HEAD,
    PLANT_LAYER,
    plant,
    raw_attentions,
    rows_onto,
    scores,
)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama-mha")


# --------------------------------------------------------------------------- constituency: pure parts
CAT = [(0, 1, "det"), (1, 2, "nsubj"), (3, 5, "case"), (4, 5, "det"), (5, 2, "obl"), (6, 2, "punct")]
"""The/2 cat/3 sat/0 on/6 the/6 mat/3 ./3 (0-based dependent, head)."""


def test_gold_spans_are_the_projective_subtree_yields_without_punctuation():
    assert kept_words(7, CAT) == [0, 1, 2, 3, 4, 5]
    assert gold_spans(7, CAT) == {(0, 2), (3, 6)}  # "The cat", "on the mat"; the root's yield is the sentence
    # a non-projective subtree (word 1's yield {1, 3} skips word 2) gives no span
    assert gold_spans(4, [(0, 2, "x"), (1, 2, "x"), (3, 1, "x")]) == set()


def test_greedy_split_right_branching_and_f1_on_a_worked_example():
    # split 0..5 at the largest distance (between words 1 and 2), then 2..5 at 2|3, then 3..5 at 4|5
    assert greedy_spans([0.1, 0.9, 0.5, 0.2, 0.3]) == {(0, 6), (0, 2), (2, 6), (3, 6), (3, 5)}
    assert greedy_spans([0.5, 0.5]) == {(0, 3), (1, 3)}  # ties: the first maximum splits
    assert right_branching_spans(4) == {(0, 4), (1, 4), (2, 4)}
    gold = {(0, 2), (3, 6)}
    # non-trivial predicted spans (0,2) (2,6) (3,6) (3,5): 2 hits, precision 2/4, recall 2/2
    assert span_f1(greedy_spans([0.1, 0.9, 0.5, 0.2, 0.3]), gold, 6) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert span_f1(right_branching_spans(6), gold, 6) == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    assert span_f1({(0, 6)}, gold, 6) == 0.0


def test_the_threshold_is_half_the_right_branching_spread_on_the_treebank():
    rb, random_trees = [], []
    r = random.Random(0)
    for words, arcs in treebank_sentences():
        n = len(kept_words(len(words), arcs))
        gold = gold_spans(len(words), arcs)
        rb.append(span_f1(right_branching_spans(n), gold, n))
        random_trees.append([span_f1(greedy_spans([r.random() for _ in range(n - 1)]), gold, n) for _ in range(20)])
    assert len(rb) == 65
    assert statistics.mean(rb) == pytest.approx(0.264, abs=5e-4)
    assert statistics.stdev(rb) == pytest.approx(0.160, abs=5e-4)
    assert MARGIN == pytest.approx(round(statistics.stdev(rb) / 2, 2))
    # no tree drawn at random distances beats right-branching by the margin on average
    per_draw = [statistics.mean(row[k] for row in random_trees) for k in range(20)]
    assert max(per_draw) < statistics.mean(rb) + MARGIN


# --------------------------------------------------------------------------- constituency: tiny model
N_SENT = 16


def treebank_meta() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The first 16 treebank sentences as one token per word after a BOS (random ids), right-padded."""
    sents = treebank_sentences()[:N_SENT]
    t = max(len(w) for w, _ in sents) + 1
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, VOCAB, (N_SENT, t), generator=g)
    ids[:, 0] = 0
    mask = torch.zeros(N_SENT, t, dtype=torch.long)
    wot = torch.full((N_SENT, t), -1, dtype=torch.long)
    for b, (words, _) in enumerate(sents):
        mask[b, : len(words) + 1] = 1
        wot[b, 1: len(words) + 1] = torch.arange(len(words))
    return ids, mask, {"word_of_token": wot, "arcs": [list(a) for _, a in sents]}


def tree_pattern(mask: torch.Tensor, meta: dict) -> torch.Tensor:
    """[b, T, T]: each word attends to the first words of the gold spans holding it (weight 2^depth, the
    innermost most) and to itself: adjacent words in the same small constituent share most of their
    distribution, words split high in the tree share little (BOS attends to itself)."""
    b, t = mask.shape
    out = torch.zeros(b, t, t)
    out[:, :, 0] = 1.0
    for i, arcs in enumerate(meta["arcs"]):
        n = int(mask[i].sum()) - 1
        kept = kept_words(n, arcs)
        gold = gold_spans(n, arcs) | {(0, len(kept))}
        for k, w in enumerate(kept):
            held = sorted((s for s in gold if s[0] <= k < s[1]), key=lambda s: s[0] - s[1])
            out[i, w + 1, 0] = 0.0
            for depth, (lo, _) in enumerate(held):
                out[i, w + 1, kept[lo] + 1] += 2.0**depth
            out[i, w + 1, w + 1] += 2.0 ** len(held)
    return out / out.sum(-1, keepdim=True)


def oracle_cgi(a: torch.Tensor, mask: torch.Tensor, meta: dict) -> float:
    """Mean over sentences of (F1 of the greedy JSD tree - F1 of right-branching), by plain loops."""

    def split(d: list[float], lo: int, hi: int, out: list) -> None:
        if hi - lo < 2:
            return
        out.append((lo, hi))
        k = lo
        for i in range(lo, hi - 1):
            if d[i] > d[k]:
                k = i
        split(d, lo, k + 1, out)
        split(d, k + 1, hi, out)

    def f1(pred: list, gold: set, n: int) -> float:
        p = {s for s in pred if s != (0, n) and s[1] - s[0] > 1}
        hit = len(p & gold)
        return 0.0 if not hit else 2 * hit / (len(p) + len(gold))

    vals = []
    for i, arcs in enumerate(meta["arcs"]):
        n = int(mask[i].sum()) - 1
        kept = kept_words(n, arcs)
        gold = gold_spans(n, arcs)
        rows = []
        for w in kept:
            row = [float(a[i, w + 1, v + 1]) for v in range(n)]
            total = sum(row)
            rows.append([x / total for x in row])
        d = []
        for p, q in itertools.pairwise(rows):
            m = [(x + y) / 2 for x, y in zip(p, q, strict=True)]
            d.append(sum(0.5 * x * math.log(x / z) for x, z in zip(p, m, strict=True) if x > 0)
                     + sum(0.5 * y * math.log(y / z) for y, z in zip(q, m, strict=True) if y > 0))
        tree: list = []
        split(d, 0, len(kept), tree)
        vals.append(f1(tree, gold, len(kept)) - f1([(j, len(kept)) for j in range(len(kept) - 1)], gold, len(kept)))
    return sum(vals) / len(vals)


def test_constituency_finds_a_planted_tree_head_and_matches_the_oracle(lm, monkeypatch):
    ids, mask, meta = treebank_meta()
    plant(monkeypatch, tree_pattern(mask, meta))
    s = scores(lm, "constituency_grammar", ids, mask, meta)
    assert s[PLANT_LAYER, PLANT_HEAD] > 0.3  # the ceiling of a binary tree on these flat gold spans minus RB
    others = s.clone()
    others[PLANT_LAYER, PLANT_HEAD] = float("nan")
    assert (others[~others.isnan()] < get_detector("constituency_grammar").threshold).all(), s
    monkeypatch.undo()

    attn = raw_attentions(lm, ids, mask)
    expect = torch.tensor([[oracle_cgi(a[:, h], mask, meta) for h in range(4)] for a in attn], dtype=torch.float64)
    torch.testing.assert_close(scores(lm, "constituency_grammar", ids, mask, meta), expect, atol=1e-6, rtol=0)


def test_constituency_needs_the_treebank_meta(lm):
    ids, mask, _ = treebank_meta()
    with pytest.raises(DetectorError, match="word_of_token"):
        scores(lm, "constituency_grammar", ids, mask, {})


# --------------------------------------------------------------------------- sentiment: task
def test_sentiment_task_marks_words_summaries_and_answers(smollm2):
    tok = smollm2.tokenizer
    b = sentiment(tok, n=12, seed=3)
    good, bad = (tok.encode(a, add_special_tokens=False)[0] for a in ANSWERS)
    for i, text in enumerate(b.texts):
        ids = b.input_ids[i]
        assert tok.decode([int(ids[b.meta["comma_pos"][i]])]) == ","
        assert tok.decode([int(ids[b.meta["period_pos"][i]])]) == "."
        assert b.meta["summary"][i].nonzero().flatten().tolist() == [int(b.meta["comma_pos"][i]),
                                                                       int(b.meta["period_pos"][i])]
        words = tok.decode(ids[b.meta["sentiment"][i]].tolist())
        assert text.startswith(tok.decode(ids[1: int(b.meta["end_pos"][i]) + 1].tolist()))
        assert words.split()[0] in text.split(",")[0] and words.split()[-1] in text.split(",")[1]
        assert int(b.meta["target_id"][i]) == (good if b.meta["positive"][i] else bad)
        assert int(b.meta["wrong_id"][i]) == (bad if b.meta["positive"][i] else good)
        assert "good" not in text and "bad" not in text
    assert b.meta["positive"].sum() == 6
    assert sentiment(tok, n=12, seed=3).texts == b.texts and sentiment(tok, n=12, seed=4).texts != b.texts


# --------------------------------------------------------------------------- sentiment: tiny model
B, T = 3, 20


def review_meta() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Three synthetic reviews: sentiment words, a comma after the first, a period after the second, an end."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, T - 3:] = 0
    layout = [(8, 9, 12, 13), (7, 8, 11, 13), (9, 10, 12, 14)]  # adjective, comma, verb, period
    senti = torch.zeros(B, T, dtype=torch.bool)
    summary = torch.zeros(B, T, dtype=torch.bool)
    for i, (adj, comma, verb, period) in enumerate(layout):
        senti[i, [adj, verb]] = True
        senti[i, adj - 1] = i == 1  # a two-token adjective in row 1
        summary[i, [comma, period]] = True
    return ids, mask, {"sentiment": senti, "summary": summary, "end_pos": mask.sum(1) - 1}


def summarizer_target(mask: torch.Tensor, meta: dict) -> torch.Tensor:
    t = torch.ones(T, T, dtype=torch.bool).tril(-1)[None] & meta["sentiment"][:, None, :] & meta["summary"][:, :, None]
    return t & mask.bool()[:, None, :]


def reader_target(mask: torch.Tensor, meta: dict) -> torch.Tensor:
    end = torch.zeros(B, T, dtype=torch.bool)
    end[torch.arange(B), meta["end_pos"]] = True
    return end[:, :, None] & meta["summary"][:, None, :] & mask.bool()[:, None, :]


def oracle_mass(a: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over sequences of the mean over rows of A[i, target] / A[i, real keys j with 0 < j < i]."""
    seq = []
    for b in range(a.shape[0]):
        vals = []
        for i in range(int(mask[b].sum())):
            if not rows[b, i] or not target[b, i].any():
                continue
            allowed = [j for j in range(1, i) if mask[b, j]]
            vals.append(sum(float(a[b, i, j]) for j in allowed if target[b, i, j]) / sum(float(a[b, i, j]) for j in allowed))
        if vals:
            seq.append(sum(vals) / len(vals))
    return sum(seq) / len(seq)


@pytest.mark.parametrize("name", ["sentiment_summarizer", "summary_reader"])
def test_sentiment_detectors_find_the_planted_head_and_match_the_oracle(lm, monkeypatch, name):
    ids, mask, meta = review_meta()
    target = (summarizer_target if name == "sentiment_summarizer" else reader_target)(mask, meta)
    rows = meta["summary"] if name == "sentiment_summarizer" else target.any(-1)
    # the planted head attends to the targets from the scored rows, to BOS elsewhere
    plant(monkeypatch, rows_onto(target, mask))
    s = scores(lm, name, ids, mask, meta)
    assert s[PLANT_LAYER, PLANT_HEAD] == pytest.approx(1.0)
    others = s.clone()
    others[PLANT_LAYER, PLANT_HEAD] = float("nan")
    assert (others[~others.isnan()] < get_detector(name).threshold).all(), s
    monkeypatch.undo()

    attn = raw_attentions(lm, ids, mask)
    expect = torch.tensor([[oracle_mass(a[:, h], mask, rows, target) for h in range(4)] for a in attn],
                          dtype=torch.float64)
    torch.testing.assert_close(scores(lm, name, ids, mask, meta), expect, atol=1e-5, rtol=0)


def test_sentiment_detectors_need_their_meta(lm):
    ids, mask, _ = review_meta()
    for name, key in (("sentiment_summarizer", "sentiment"), ("summary_reader", "summary")):
        with pytest.raises(DetectorError, match=key):
            scores(lm, name, ids, mask, {})


# --------------------------------------------------------------------------- constant head
T_MCQ = 48


def letters_meta() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Three synthetic MCQ prompts of 46-48 tokens (a head spread over all keys puts 1/12 of its attention on
    the letters): four option letters, the correct one varying, the last token answers."""
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(1, VOCAB, (B, T_MCQ), generator=g)
    ids[:, 0] = 0
    mask = torch.ones(B, T_MCQ, dtype=torch.long)
    mask[1, T_MCQ - 2:] = 0
    letter_pos = torch.tensor([[13, 20, 27, 34], [12, 18, 24, 30], [14, 21, 28, 35]])
    return ids, mask, {"letter_pos": letter_pos, "correct": torch.tensor([0, 2, 3])}


@pytest.mark.parametrize("spread", [True, False])
def test_constant_letters_scores_even_spread_not_one_letter_and_matches_the_oracle(lm, monkeypatch, spread):
    ids, mask, meta = letters_meta()
    end = mask.sum(1) - 1
    target = torch.zeros(B, T_MCQ, T_MCQ, dtype=torch.bool)
    for b in range(B):
        keys = meta["letter_pos"][b] if spread else meta["letter_pos"][b, meta["correct"][b]]
        target[b, end[b], keys] = True
    plant(monkeypatch, rows_onto(target, mask))
    s = scores(lm, "constant_letters", ids, mask, meta)
    # four letters with 1/4 each: all the mass is spread evenly; one letter with all of it: none is
    assert s[PLANT_LAYER, PLANT_HEAD] == pytest.approx(1.0 if spread else 0.0, abs=1e-6)
    others = s.clone()
    others[PLANT_LAYER, PLANT_HEAD] = float("nan")
    assert (others[~others.isnan()] < get_detector("constant_letters").threshold).all(), s
    monkeypatch.undo()

    attn = raw_attentions(lm, ids, mask)
    expect = torch.tensor([[sum(4 * min(float(a[b, h, end[b], p]) for p in meta["letter_pos"][b]) for b in range(B)) / B
                            for h in range(4)] for a in attn], dtype=torch.float64)
    torch.testing.assert_close(scores(lm, "constant_letters", ids, mask, meta), expect, atol=1e-6, rtol=0)
