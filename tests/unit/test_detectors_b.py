"""Detectors B (issue 14 §3): statistical induction, n-gram, iteration, multiple-choice letter and
arithmetic heads. Planted patterns: a record in which one head has the type's ideal pattern and the others
plausible distractors (uniform, previous token, first token); the detector must label that head only.
Oracles: scores on a tiny random Llama recomputed from HF's own attention weights with plain loops."""

from __future__ import annotations

import pytest
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.detectors import CircuitWeights, get_detector
from headmine.detectors.base import induction_template
from headmine.detectors.target_mass import ngram_template
from headmine.tasks import PROBES
from tests.tiny_models import hf_attentions, tiny_model


@pytest.fixture(scope="module")
def tok(smollm2):
    return smollm2.tokenizer


def build(tok, task: str, **params):
    probe = PROBES.get(task)
    return probe.build(tok, **{**probe.defaults, "n": 6, **params})


def distractors(t: int) -> list[torch.Tensor]:
    """[T, T] causal patterns no type here should claim: uniform, previous token, all on the first token."""
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(t - 1)] = 1
    first = torch.zeros(t, t)
    first[:, 0] = 1
    return [uniform, prev, first]


def planted_record(batch, ideal: torch.Tensor) -> CaptureRecord:
    """Layer 0: head 0 = ``ideal`` [B, T, T] (rows without a target: uniform), heads 1-3 distractors."""
    b, t = batch.input_ids.shape
    heads = [ideal] + [d.expand(b, t, t) for d in distractors(t)]
    a = torch.stack(heads, 1).clone()  # [B, 4, T, T]
    return CaptureRecord(input_ids=batch.input_ids, attention_mask=batch.attention_mask, heads={0: [0, 1, 2, 3]},
                         pattern={0: a})


def spread_over(template: torch.Tensor) -> torch.Tensor:
    """Attention spread evenly over each row's targets; uniform (causal) on rows without one."""
    t = template.shape[-1]
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]
    w = template.float()
    n = w.sum(-1, keepdim=True)
    return torch.where(n > 0, w / n.clamp_min(1), uniform.expand_as(w))


def labelled(det_name: str, rec: CaptureRecord, meta) -> list[int]:
    det = get_detector(det_name)
    df = det(rec, meta)
    return sorted(int(h) for h in df[df.value >= det.threshold]["head"])


# --------------------------------------------------------------------------- templates
def test_ngram_template_generalises_induction() -> None:
    ids = torch.tensor([[5, 1, 2, 3, 1, 2, 4, 1, 2, 3]])
    assert torch.equal(ngram_template(ids, 2), induction_template(ids))
    # (1, 2) recurs at 4-5 and 7-8, (2, 3) at 8-9: each query's targets follow the earlier copies
    assert ngram_template(ids, 3)[0].nonzero().tolist() == [[5, 3], [8, 3], [8, 6], [9, 4]]
    with pytest.raises(DetectorError):
        ngram_template(ids, 1)


# --------------------------------------------------------------------------- planted patterns
def test_markov_tasks_are_seeded_chains(tok) -> None:
    a, b = build(tok, "markov_chain", seed=3), build(tok, "markov_chain", seed=3)
    assert torch.equal(a.input_ids, b.input_ids)
    body = a.input_ids[:, a.meta["body_start"]:]
    for row, states in zip(body, a.meta["states"], strict=True):
        assert set(row.tolist()) <= set(states.tolist())
    two = build(tok, "markov_chain_order2")
    assert two.meta["order"] == 2 and two.meta["states"].shape[1] == 4
    # an order-2 chain with peaked rows repeats its trigrams: the n-gram template has targets
    assert ngram_template(two.input_ids, 3).any(-1).float().mean() > 0.5


@pytest.mark.parametrize(("name", "task", "n"), [("statistical_induction", "markov_chain", 2),
                                                 ("ngram_head", "markov_chain_order2", 3)])
def test_chain_heads_find_the_planted_head_only(tok, name, task, n) -> None:
    batch = build(tok, task)
    rec = planted_record(batch, spread_over(ngram_template(batch.input_ids, n)))
    assert labelled(name, rec, batch.meta) == [0]


def test_ngram_head_is_not_a_bigram_induction_head(tok) -> None:
    """On an order-2 chain, a head spread over ALL bigram followers (a statistical induction head) is
    not labelled an n-gram head: only a share of bigram matches are trigram matches."""
    batch = build(tok, "markov_chain_order2")
    rec = planted_record(batch, spread_over(ngram_template(batch.input_ids, 2)))
    assert labelled("ngram_head", rec, batch.meta) == []
    assert labelled("statistical_induction", rec, batch.meta) == [0]


def test_iteration_head_found_on_the_cot_diagonal(tok) -> None:
    batch = build(tok, "iteration", length=5, n_shots=2)
    tg = batch.meta["iteration_target"]
    # the separator of shot 1 looks up x_1, the step holding s_1 looks up x_2 (offset L between them)
    sep = int((tg[0] >= 0).nonzero()[0])
    assert int(tg[0, sep]) == sep - 5 and int(tg[0, sep + 1]) == sep - 4
    t = batch.input_ids.shape[1]
    onehot = (tg[:, :, None] == torch.arange(t)) & (tg[:, :, None] >= 0)
    rec = planted_record(batch, spread_over(onehot))
    assert labelled("iteration", rec, batch.meta) == [0]
    df = get_detector("iteration")(rec, batch.meta)
    assert df[df["head"] == 0].value.item() == pytest.approx(1.0)


def end_row_pattern(batch, keys: torch.Tensor) -> torch.Tensor:
    """Uniform causal rows, except each prompt's last row: all attention on ``keys`` [B] (one key each)."""
    b, t = batch.input_ids.shape
    a = spread_over(torch.zeros(b, t, t, dtype=torch.bool)).clone()
    end = batch.attention_mask.sum(1) - 1
    a[torch.arange(b), end] = 0
    a[torch.arange(b), end, keys] = 1
    return a


def test_letter_heads_tell_correct_from_single_letter(tok) -> None:
    batch = build(tok, "mcq", n=8)
    pos, correct = batch.meta["letter_pos"], batch.meta["correct"]
    assert len(set(correct.tolist())) > 1  # answers are shuffled over the letters
    ids = batch.input_ids
    for i in range(len(batch)):
        assert [tok.decode(ids[i, p]).strip() for p in pos[i]] == ["A", "B", "C", "D"]
    to_correct = planted_record(batch, end_row_pattern(batch, pos.gather(1, correct[:, None])[:, 0]))
    assert labelled("correct_letter", to_correct, batch.meta) == [0]
    # its favourite letter is the most frequent correct one: right only in that share of prompts
    share = torch.bincount(correct, minlength=4).max().item() / len(batch)
    df = get_detector("single_letter")(to_correct, batch.meta)
    assert df[df["head"] == 0].value.item() == pytest.approx(share) and share < 0.5
    assert labelled("single_letter", to_correct, batch.meta) == []
    to_b = planted_record(batch, end_row_pattern(batch, pos[:, 1]))
    assert labelled("single_letter", to_b, batch.meta) == [0]
    df = get_detector("correct_letter")(to_b, batch.meta)
    assert df[df["head"] == 0].value.item() == pytest.approx(float((correct == 1).float().mean()))


def test_arithmetic_head_reads_the_open_problem(tok) -> None:
    batch = build(tok, "arithmetic_probe", n=6)
    ops = batch.meta["operand_pos"]
    text = [tok.decode(batch.input_ids[0, ops[0]])]
    assert text[0].replace(" ", "").count("+") == 1 and text[0].replace(" ", "")[0].isdigit()
    a_first, b_first = batch.meta["a_span"][:, 0], batch.meta["b_span"][:, 0]
    both = end_row_pattern(batch, a_first)
    end = batch.attention_mask.sum(1) - 1
    rows = torch.arange(len(batch))
    both[rows, end, a_first] = 0.5
    both[rows, end, b_first] = 0.5
    rec = planted_record(batch, both)
    # the previous-token distractor reads only the second operand's last digit: not an arithmetic head
    assert labelled("arithmetic_operands", rec, batch.meta) == [0]
    one = planted_record(batch, end_row_pattern(batch, a_first))
    assert labelled("arithmetic_operands", one, batch.meta) == []


def test_letter_detector_without_its_metadata_is_a_clear_error(tok) -> None:
    batch = build(tok, "markov_chain")
    rec = planted_record(batch, spread_over(induction_template(batch.input_ids)))
    with pytest.raises(DetectorError, match="needs batch metadata"):
        get_detector("correct_letter")(rec, batch.meta)


# --------------------------------------------------------------------------- raw-torch oracles
@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama-mha")


def test_ngram_score_matches_a_loop_oracle(tiny) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 7, (2, 20), generator=g)  # 4 symbols: many repeated bigrams and trigrams
    rec = run_capture(tiny, CaptureSpec(sites={Site.PATTERN}), ids)
    df = get_detector("ngram_head")(rec, {})
    att = hf_attentions(tiny, ids)
    for layer in range(3):
        for head in range(4):
            per_seq = []
            for b in range(2):
                num = den = 0.0
                for i in range(2, 20):
                    targets = [j for j in range(2, i + 1) if ids[b, j - 1] == ids[b, i] and ids[b, j - 2] == ids[b, i - 1]]
                    if not targets:
                        continue
                    row = att[layer][b, head, i]
                    num += float(sum(row[j] for j in targets))
                    den += float(row[1:].sum())  # key 0 excluded
                per_seq.append(num / den)
            want = sum(per_seq) / len(per_seq)
            got = df[(df.layer == layer) & (df["head"] == head)].value.item()
            assert got == pytest.approx(want, abs=1e-5)


def test_target_mass_scores_match_a_loop_oracle(tiny) -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 16), generator=g)
    letter_pos = torch.tensor([[2, 5, 8, 11], [1, 3, 5, 7], [4, 6, 9, 12]])
    correct = torch.tensor([2, 0, 3])
    targets = torch.full((3, 16), -1)
    targets[:, 10:15] = torch.arange(3, 8)  # query 10 + k looks up key 3 + k
    meta = {"letter_pos": letter_pos, "correct": correct, "iteration_target": targets}
    rec = run_capture(tiny, CaptureSpec(sites={Site.PATTERN}), ids)
    att = hf_attentions(tiny, ids)
    got_c = get_detector("correct_letter")(rec, meta)
    got_i = get_detector("iteration")(rec, meta)
    for layer in range(3):
        for head in range(4):
            want_c = sum(float(att[layer][b, head, 15, letter_pos[b, correct[b]]]) for b in range(3)) / 3
            want_i = sum(float(att[layer][b, head, 10 + k, 3 + k]) for b in range(3) for k in range(5)) / 15
            cell = (got_c.layer == layer) & (got_c["head"] == head)
            assert got_c[cell].value.item() == pytest.approx(want_c, abs=1e-5)
            assert got_i[cell].value.item() == pytest.approx(want_i, abs=1e-5)


# --------------------------------------------------------------------------- semantic induction
def test_semantic_relations_prompts_hold_head_and_tail(tok) -> None:
    batch = build(tok, "semantic_relations", n=6)
    ids, meta = batch.input_ids, batch.meta
    for i in range(len(batch)):
        text = batch.texts[i]
        tail = tok.decode(ids[i, meta["tail_pos"][i]]).strip()
        assert text.count(tail) >= 1 and text.rstrip().endswith(("is", "of"))
        # both subject mentions end in the same token
        assert ids[i, meta["head_pos"][i, 0]] == ids[i, meta["head_pos"][i, 1]]
    assert set(meta["relation"]) == {"country_capital", "country_language", "object_colour"}


def _semantic_weights(d: int, vocab: int, relate: torch.Tensor) -> CircuitWeights:
    """One layer, 3 heads, d_head = d_model = d, W_U = identity: head 0's W_O maps e_s to e_{relate[s]}
    (s's value is e_s), head 1's W_O is the identity (raises s itself), head 2's is random."""
    torch.manual_seed(2)
    w_o = torch.stack([torch.eye(d)[relate], torch.eye(d), torch.randn(d, d) * 0.1])[None]  # row s of head 0: e_{relate[s]}
    z = torch.zeros(1, 3, d, d)
    return CircuitWeights(W_Q=z, W_K=z, W_V=z, W_O=w_o, W_U=torch.eye(d)[:, :vocab], attn_norm_gain=torch.ones(1, d))


def test_semantic_induction_finds_the_planted_relation_head() -> None:
    d = vocab = 16
    relate = torch.arange(d).roll(-1)  # the tail of s is s + 1
    ids = torch.tensor([[0, 3, 4, 9, 7, 8, 12, 3], [0, 5, 6, 10, 11, 2, 13, 5]])  # subject 3 (tail 4), 5 (tail 6)
    t = ids.shape[1]
    head_pos = torch.tensor([[7, 1], [7, 1]])  # the question's subject, the fact's subject
    meta = {"head_pos": head_pos, "tail_id": torch.tensor([4, 6])}
    a = torch.zeros(2, 3, t, t)
    a[:, :, :, 0] = 1.0  # every row on the sink...
    a[:, 0, 7] = 0.0
    a[:, 0, 7, 0], a[:, 0, 7, 1] = 0.5, 0.4  # ...head 0's last row singles out the fact's subject
    a[:, 0, 7, 2:7] = 0.02
    a[:, 1, 7] = a[:, 0, 7]  # head 1 attends the same way but its OV copies the subject
    a[:, 2, 7] = torch.tensor([0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])  # head 2: no dominant key
    v = torch.eye(d)[ids][:, :, None, :].expand(2, t, 3, d)  # one KV head per query head, value e_token
    rec = CaptureRecord(input_ids=ids, attention_mask=torch.ones_like(ids), heads={0: [0, 1, 2]}, pattern={0: a},
                        v={0: v.contiguous()})
    w = _semantic_weights(d, vocab, relate)
    df = get_detector("semantic_induction")(rec, meta, w)
    got = df.set_index("head").value
    # oracle: head 0's logits over the visible ids are one-hot on the tail: q_o / sum q = 1
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(0.0)  # raises the subject, and the tail not above the mean
    assert got[2] == 0.0  # never qualifies
    # not tau-dominant (0.4 vs 0.2 on another key): the event does not qualify
    a[:, 0, 7, 3] = 0.2
    df = get_detector("semantic_induction")(rec, meta, w)
    assert df.set_index("head").value[0] == 0.0
