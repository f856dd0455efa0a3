"""Detectors on hand-built attention patterns and weights (no real model)."""

from __future__ import annotations

import math

import pytest
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.core.tables import scores_frame
from headmine.detectors import (
    DETECTORS,
    BatchScores,
    CircuitWeights,
    ScoreAccumulator,
    get_detector,
    resolve_detectors,
)
from headmine.detectors.base import NON_FIRST_MASS, CausalCheckSpec, Detector, induction_template
from headmine.pipeline.results import CausalCheck, ScanConfig, ScanResult

T = 12


def record(patterns: dict[int, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor | None = None, **extra) -> CaptureRecord:
    heads = {layer: list(range(p.shape[1])) for layer, p in patterns.items()}
    return CaptureRecord(input_ids=ids, attention_mask=torch.ones_like(ids) if mask is None else mask,
                         heads=heads, pattern=patterns, **extra)


def prev_pattern(t: int = T) -> torch.Tensor:
    a = torch.zeros(t, t)
    a[0, 0] = 1
    a[torch.arange(1, t), torch.arange(t - 1)] = 1
    return a


def uniform_pattern(t: int = T) -> torch.Tensor:
    return torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]


def window_pattern(n: int, t: int = T) -> torch.Tensor:
    """Row i spreads over keys i-n+1..i (n keys, the previous token among them), key 0 excluded."""
    a = torch.zeros(t, t)
    for i in range(t):
        keys = [j for j in range(max(1, i - n + 1), i + 1)] or [0]
        a[i, keys] = 1 / len(keys)
    return a


def test_registry_tags_every_detector_with_a_survey_type():
    assert {"previous_token", "duplicate_token", "induction", "prefix_matching", "copying", "successor",
            "copy_suppression", "name_mover", "retrieval", "attention_sink", "positional"} <= set(DETECTORS.names())
    for _, det in DETECTORS.items():
        assert det.head_type and det.stage in {"Knowledge Recalling", "In-Context Identification",
                                               "Latent Reasoning", "Expression Preparation"}
        assert det.sites and det.task


def test_unknown_detector_is_a_clear_error():
    with pytest.raises(DetectorError, match="unknown detector 'bogus'"):
        resolve_detectors(["induction", "bogus"])
    with pytest.raises(DetectorError):
        get_detector("nope")


def test_perfect_previous_token_scores_one_and_uniform_about_one_over_n():
    ids = torch.randint(0, 50, (1, T))
    pats = torch.stack([prev_pattern(), window_pattern(4), uniform_pattern()])[None]  # [1, 3 heads, T, T]
    df = get_detector("previous_token")(record({0: pats}, ids))
    vals = df.sort_values("head").value.tolist()
    assert vals[0] == pytest.approx(1.0)
    # rows with >= 4 earlier keys put 1/4 on the previous token; early rows have fewer keys
    assert 0.25 <= vals[1] < 0.4
    assert vals[2] < 0.35


def test_bos_exclusion():
    ids = torch.randint(1, 50, (1, T))
    a = prev_pattern() * 0.5
    a[:, 0] += 0.5  # half the mass on the sink
    a[0, 0] = 1.0
    rec = record({0: a[None, None]}, ids)
    assert get_detector("previous_token")(rec).value.item() == pytest.approx(1.0)  # key 0 excluded
    from headmine.detectors.base import previous_template, template_score

    kept = template_score(rec, previous_template(ids), {}, exclude_bos=False).values
    assert float(kept[0, 0, 0]) < 0.6
    sink = get_detector("attention_sink")(rec).value.item()
    assert sink == pytest.approx(0.5 + 0.5 / (T - 1), abs=1e-6)  # row 1's previous token is key 0


def repeated(n: int = 5) -> torch.Tensor:
    r = torch.randperm(40)[:n] + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), r, r])[None]


def test_induction_duplicate_prefix_matching_on_perfect_patterns():
    ids = repeated()
    t = ids.shape[1]
    ind = induction_template(ids)[0].float()
    rows_with = ind.sum(-1) > 0
    ind_pat = torch.where(rows_with[:, None], ind, prev_pattern(t))
    dup = torch.zeros(t, t)
    dup[0, 0] = 1
    for i in range(1, t):
        same = [j for j in range(i) if ids[0, j] == ids[0, i]]
        dup[i, same or [i]] = 1 / max(1, len(same))
    rec = record({0: torch.stack([ind_pat, dup])[None]}, ids)
    ind_scores = get_detector("induction")(rec).sort_values("head").value.tolist()
    dup_scores = get_detector("duplicate_token")(rec).sort_values("head").value.tolist()
    pm = get_detector("prefix_matching")(rec).sort_values("head").value.tolist()
    assert ind_scores == pytest.approx([1.0, 0.0])
    assert dup_scores == pytest.approx([0.0, 1.0])
    assert pm == pytest.approx([1.0, 0.0])


def test_padding_and_query_subsets_are_respected():
    ids = torch.randint(1, 50, (2, T))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    a = prev_pattern()[None, None].repeat(2, 1, 1, 1)
    a[1, :, 8:] = 1 / T  # garbage on padded query rows must not count
    df = get_detector("previous_token")(record({0: a}, ids, mask))
    assert df.value.item() == pytest.approx(1.0)
    assert df.n.item() == 2


def test_gqa_heads_are_scored_per_query_head():
    from tests.tiny_models import tiny_model

    lm = tiny_model("llama-gqa")
    g = lm.geometry
    assert g.n_kv_heads < g.n_heads
    ids = torch.randint(0, 90, (2, 10))
    rec = run_capture(lm, CaptureSpec(sites={Site.PATTERN}), ids)
    df = get_detector("previous_token")(rec, {"n_layers": g.n_layers, "n_heads": g.n_heads})
    assert len(df) == g.n_layers * g.n_heads
    m = df.pivot(index="layer", columns="head", values="value").to_numpy()
    assert not math.isnan(m.sum())
    # query heads that share one KV head still get their own (different) scores
    assert abs(m[0, 0] - m[0, 1]) > 1e-6
    from headmine.detectors.weights import circuit_weights

    w = circuit_weights(lm)
    assert w.W_K.shape[:2] == (g.n_layers, g.n_heads) and w.W_V.shape[:2] == (g.n_layers, g.n_heads)


def test_accumulator_streams_like_one_shot():
    torch.manual_seed(0)
    vals = torch.rand(10, 2, 3, dtype=torch.float64)
    vals[3, 1, 2] = float("nan")
    one, two = ScoreAccumulator(), ScoreAccumulator()
    one.add(BatchScores(vals))
    for chunk in vals.split(3):
        two.add(BatchScores(chunk))
    a = one.finalize(method="x")
    b = two.finalize(method="x")
    assert a.value.tolist() == pytest.approx(b.value.tolist())
    assert a.stderr.tolist() == pytest.approx(b.stderr.tolist())
    cell = a[(a.layer == 1) & (a["head"] == 2)]
    assert cell.n.item() == 9
    assert cell.value.item() == pytest.approx(float(vals[:, 1, 2].nanmean()))


def _weights(ov: torch.Tensor, d: int, vocab: int, n_heads: int = 1) -> CircuitWeights:
    """One layer whose head 0 maps embedding e_t to the unembedding column ov @ e_t; other heads are random."""
    torch.manual_seed(1)
    eye = torch.eye(d)
    w_v = torch.randn(1, n_heads, d, d) * 0.1
    w_o = torch.randn(1, n_heads, d, d) * 0.1
    w_v[0, 0] = eye
    w_o[0, 0] = ov
    return CircuitWeights(W_Q=torch.randn(1, n_heads, d, d), W_K=torch.randn(1, n_heads, d, d), W_V=w_v, W_O=w_o,
                          W_U=torch.eye(d)[:, :vocab], attn_norm_gain=torch.ones(1, d))


def _iso_record(ids: list[int], d: int) -> CaptureRecord:
    resid = torch.eye(d)[ids][:, None, :] * 3.0  # W_EE[t] = 3 e_t
    x = torch.tensor(ids)[:, None]
    return CaptureRecord(input_ids=x, attention_mask=torch.ones_like(x), heads={0: [0, 1]}, resid={1: resid})


def test_successor_and_copy_suppression_on_hand_built_ov_circuits():
    d = 8
    shift = torch.roll(torch.eye(d), 1, dims=1)  # e_t -> e_{t+1}
    w = _weights(shift, d, d, n_heads=2)
    toks = list(range(6))
    rec = _iso_record(toks, d)
    df = get_detector("successor")(rec, {"token_ids": torch.tensor(toks), "ordinal_sets": [toks]}, w)
    assert df[df["head"] == 0].value.item() == pytest.approx(1.0)
    w_neg = _weights(-torch.eye(d), d, d, n_heads=2)
    rec = _iso_record(list(range(d)), d)
    cs = get_detector("copy_suppression")(rec, {"token_ids": torch.arange(d)}, w_neg)
    assert cs[cs["head"] == 0].value.item() == pytest.approx(1.0)
    neg = get_detector("negative_name_copy")(rec, {"token_ids": torch.arange(d)}, w_neg)
    pos = get_detector("name_copy")(rec, {"token_ids": torch.arange(d)}, _weights(torch.eye(d), d, d, 2))
    assert neg[neg["head"] == 0].value.item() == pytest.approx(1.0)
    assert pos[pos["head"] == 0].value.item() == pytest.approx(1.0)
    with pytest.raises(DetectorError, match="CircuitWeights"):
        get_detector("successor")(rec, {"token_ids": torch.arange(d), "ordinal_sets": [toks]}, None)


def test_name_mover_reads_end_to_io():
    ids = torch.randint(1, 50, (2, 8))
    a = torch.zeros(2, 1, 1, 8)
    a[0, 0, 0, 2] = 0.7
    a[0, 0, 0, 0] = 0.3
    a[1, 0, 0, 3] = 1.0
    rec = CaptureRecord(input_ids=ids, attention_mask=torch.ones_like(ids), heads={0: [0]}, pattern={0: a},
                        query_index=torch.tensor([[7], [7]]))
    df = get_detector("name_mover")(rec, {"END": torch.tensor([7, 7]), "IO": torch.tensor([2, 3])})
    assert df.value.item() == pytest.approx(0.85)


def test_retrieval_counts_copy_paste_events():
    ids = torch.tensor([[0, 5, 6, 7, 8, 9]])
    a = torch.zeros(1, 2, 1, 6)
    a[0, 0, 0, 3] = 1.0  # head 0 attends to token 7 inside the needle
    a[0, 1, 0, 5] = 1.0  # head 1 attends outside the needle
    rec = CaptureRecord(input_ids=ids, attention_mask=torch.ones_like(ids), heads={0: [0, 1]}, pattern={0: a},
                        query_index=torch.tensor([[5]]))
    v = get_detector("retrieval").score(rec, {"needle_span": torch.tensor([[2, 5]]), "generated": torch.tensor([7])}).values
    assert v[0, 0, 0].item() == pytest.approx(1 / 3)
    assert v[0, 0, 1].item() == 0.0


def test_positional_finds_fixed_offsets():
    ids = torch.randint(1, 50, (1, T))
    off2 = torch.zeros(T, T)
    for i in range(T):
        off2[i, max(0, i - 2)] = 1
    df = get_detector("positional")(record({0: torch.stack([off2, uniform_pattern()])[None]}, ids))
    vals = df.sort_values("head").value.tolist()
    assert vals[0] == pytest.approx(1.0) and vals[1] < 0.5


def test_a_detector_declares_its_survey_type_and_causal_check() -> None:
    from headmine.core.errors import DetectorError

    def score(record, meta, weights=None):  # never called
        raise AssertionError

    alias = Detector(name="x", head_type="IH", task="repeated_tokens", sites=frozenset({Site.PATTERN}), score=score,
                     threshold=0.5, causal=CausalCheckSpec(task="repeated_tokens"))
    assert (alias.head_type, alias.stage) == ("Induction Head", "Latent Reasoning")  # alias -> canonical + stage
    with pytest.raises(DetectorError, match="needs a stage"):
        Detector(name="y", head_type="Not A Survey Type", task="repeated_tokens", sites=frozenset({Site.PATTERN}),
                 score=score, threshold=0.5, causal=None)
    own = Detector(name="y", head_type="Not A Survey Type", stage="LR", task="repeated_tokens",
                   sites=frozenset({Site.PATTERN}), score=score, threshold=0.5, causal=None)
    assert own.stage == "Latent Reasoning" and own.head_type == "Not A Survey Type"
    with pytest.raises(TypeError):  # the causal check must be declared (None says "none")
        Detector(name="z", head_type="IH", task="repeated_tokens", sites=frozenset({Site.PATTERN}), score=score,
                 threshold=0.5)  # type: ignore[call-arg]
    with pytest.raises(DetectorError, match="expected_sign"):
        CausalCheckSpec(task="repeated_tokens", expected_sign=2)


def test_a_faint_pattern_on_a_sink_is_scored_but_not_a_candidate():
    """99% of the attention on the first token and a faint 1% on the previous one: the renormalised score
    is 1.0, the non-first-token mass beside it is 0.01, and the scan neither labels nor ablates the head."""
    ids = torch.randint(1, 50, (1, T))
    faint = prev_pattern() * 0.01
    faint[:, 0] += 0.99
    faint[0, 0] = 1.0
    clear = prev_pattern()
    rec = record({0: torch.stack([faint, clear])[None]}, ids)
    df = get_detector("previous_token")(rec, with_mass=True)
    score = df[df.metric == "score"].sort_values("head").value.tolist()
    mass = df[df.metric == NON_FIRST_MASS].sort_values("head").value.tolist()
    assert score == pytest.approx([1.0, 1.0])
    assert mass == pytest.approx([0.01, 1.0], abs=1e-6)  # over the scored rows 2..T-1
    result = ScanResult(model="m", model_info={}, config=ScanConfig(), detectors=[get_detector("previous_token")],
                        scores=df, causal={}, inputs={}, probe_params={}, timings={})
    assert result.top("previous_token", 5)["head"].tolist() == [1]
    labels = result.labels()
    assert [(lab["head"], lab["head_type"]) for lab in labels] == [(1, "Previous Token Head")]
    assert "non-first-token mass 1" in labels[0]["note"]


@pytest.mark.parametrize(("name", "pattern"), [("positional", "prev"), ("local", "prev")])
def test_positional_scores_carry_their_non_first_mass(name, pattern):
    ids = torch.randint(1, 50, (1, T))
    a = prev_pattern() * 0.5
    a[:, 0] += 0.5
    a[0, 0] = 1.0
    df = get_detector(name)(record({0: a[None, None]}, ids), with_mass=True)
    assert df[df.metric == "score"].value.item() == pytest.approx(1.0)
    assert df[df.metric == NON_FIRST_MASS].value.item() == pytest.approx(0.5)


def test_a_no_harm_check_is_confirmed_only_within_the_random_spread():
    def check(top: float) -> CausalCheck:
        return CausalCheck(detector="dormant", metric="loss_text", heads=["L0H0"], k=1, clean=3.0, topk_effect=top,
                           random_effects=[0.01, 0.02, 0.03, 0.05], expected_sign=0)

    assert check(0.0).confirmed and check(0.04).confirmed
    assert not check(0.2).confirmed  # costs more than any random head set: not dormant
    harm = CausalCheck(detector="x", metric="loss_text", heads=["L0H0"], k=1, clean=3.0, topk_effect=0.2,
                       random_effects=[0.01, 0.02, 0.03, 0.05])
    assert harm.confirmed and not CausalCheck(**{**harm.__dict__, "topk_effect": 0.04}).confirmed


def test_sink_heads_are_labelled_sinks_and_only_low_kl_ones_dormant():
    sink = get_detector("attention_sink")
    assert sink.head_type == "Attention Sink Head" and sink.causal.dormant_below == pytest.approx(1e-3)
    rows = [{"layer": 0, "head": h, "method": "attention_sink", "metric": "score", "value": v, "n": 4}
            for h, v in enumerate((0.9, 0.8, 0.1))]
    rows += [{"layer": 0, "head": h, "method": "dormant", "metric": "kl_move_to_first", "value": kl, "n": 40}
             for h, kl in ((0, 2e-4), (1, 0.3))]
    dormant_check = CausalCheck(detector="dormant", metric="loss_text", heads=["L0H0"], k=1, clean=3.0,
                                topk_effect=0.0, random_effects=[0.01, 0.02], expected_sign=0)
    result = ScanResult(model="m", model_info={}, config=ScanConfig(), detectors=[sink], scores=scores_frame(rows),
                        causal={"dormant": dormant_check}, inputs={}, probe_params={}, timings={})
    labels = {(lab["head"], lab["head_type"]) for lab in result.labels()}
    assert labels == {(0, "Attention Sink Head"), (1, "Attention Sink Head"), (0, "Active-Dormant Head")}
    dormant = next(lab for lab in result.labels() if lab["head_type"] == "Active-Dormant Head")
    assert dormant["method"] == "dormant" and "confirmed (no harm expected" in dormant["note"]
