"""Successor probe and detector: ordinal items must be single KNOWN tokens, prompts are comma
separated, the evaluation scores the answer position only, and the succession score equals an
independent raw-torch computation of the effective OV circuit (Gould et al. 2023)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from headmine.core.errors import TaskError
from headmine.pipeline.scan import ScanConfig, scan_model
from headmine.tasks import ORDINAL_SEQUENCES, load_probe, load_task, ordinal, ordinal_sets
from headmine.tasks.ordinal import successor_loss
from tests.tiny_models import VOCAB, tiny_model


def word_tokenizer(words: list[str]):
    """Word-level tokenizer (whitespace and punctuation split) with [UNK]=0, <s>=1, <pad>=2."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "<pad>": 2, ",": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", pad_token="<pad>")


class CollidingTokenizer:
    """Every word is one token, but the days after Wednesday share Wednesday's id."""

    bos_token_id, eos_token_id, pad_token_id, unk_token_id = 1, 2, 0, 3
    all_special_ids = (0, 1, 2, 3)

    def __call__(self, text, add_special_tokens=True, **kw):
        w = text.strip()
        days = ORDINAL_SEQUENCES["days"]
        if w in days:
            return {"input_ids": [10 + min(days.index(w), 2)]}
        return {"input_ids": [3]}


def test_toy_vocabulary_has_no_ordinal_set(toy):
    # the toy's word-level vocabulary is t0..t63: every ordinal word is <unk> (id 3); before the fix the
    # sets were kept and every prompt was [bos, 3, 3, 3, 3, 3, 3]
    with pytest.raises(TaskError, match="unknown token"):
        ordinal_sets(toy.tokenizer)
    with pytest.raises(TaskError, match="single known tokens"):
        load_probe("ordinal_tokens", toy.tokenizer, seed=0)
    with pytest.raises(TaskError, match="single known tokens"):
        load_task("successor", toy.tokenizer, n=4, seed=0)


def test_unknown_words_truncate_a_set_and_short_sets_drop():
    tok = word_tokenizer(["Monday", "Tuesday", "Wednesday", "A", "B", *ORDINAL_SEQUENCES["number_words"][:5]])
    sets = ordinal_sets(tok)
    assert set(sets) == {"days", "number_words"}  # letters: only A, B are known (< 3 items)
    assert sets["days"].words == (" Monday", " Tuesday", " Wednesday") and sets["days"].truncated_at == " Thursday"
    assert tok.unk_token_id not in sets["days"].ids + sets["number_words"].ids
    assert len(sets["number_words"].ids) == 5
    with pytest.raises(TaskError, match="' Thursday'"):
        ordinal_sets(tok, names=["days"], strict=True)


def test_an_id_shared_by_two_items_ends_the_set():
    sets = ordinal_sets(CollidingTokenizer(), names=["days"])
    assert sets["days"].ids == (10, 11, 12) and sets["days"].truncated_at == " Thursday"


def test_prompts_are_comma_separated_and_score_only_the_answer():
    words = [w for name in ("days", "months") for w in ORDINAL_SEQUENCES[name]]
    tok = word_tokenizer(words)
    b = ordinal(tok, n=4, seed=0, length=4)
    assert b.texts[0].count(",") == 4 and b.texts[0].startswith(" ")
    for row, pos in enumerate(b.meta["item_positions"]):
        shown = tok.decode(b.input_ids[row, pos].tolist()).split()
        assert all(w in words for w in shown) and len(shown) == 4
    ev = successor_loss(tok, n=4, seed=0, length=4)
    ids = ev.batch.input_ids
    logits = torch.zeros(*ids.shape, len(tok))
    chance = math.log(len(tok))
    assert ev.measure(logits) == pytest.approx(chance, rel=1e-5)
    # a perfect prediction of every answer (the last item) and nothing else: loss ~0
    for row, pos in enumerate(ev.batch.meta["item_positions"]):
        logits[row, pos[-1] - 1, ids[row, pos[-1]]] = 50.0
    assert ev.measure(logits) < 1e-6
    # perfect predictions of the shown items do not move the metric
    logits = torch.zeros(*ids.shape, len(tok))
    for row, pos in enumerate(ev.batch.meta["item_positions"]):
        for p in pos[1:-1]:
            logits[row, p - 1, ids[row, p]] = 50.0
    assert ev.measure(logits) == pytest.approx(chance, rel=1e-5)


def raw_succession(lm, tok) -> torch.Tensor:
    """Independent reference: residual after block 0 for [bos, t], each head's OV output, final
    RMSNorm and lm_head, argmax within each set -> share of successes, per (layer, head)."""
    m, cfg = lm.model, lm.model.config
    sets = ordinal_sets(tok)
    ids = sorted({t for s in sets.values() for t in s.ids})
    row = {t: i for i, t in enumerate(ids)}
    with torch.no_grad():
        hs = m(input_ids=torch.tensor([[tok.bos_token_id, t] for t in ids]), output_hidden_states=True).hidden_states
        ee = hs[1][:, -1]
        nh, nkv, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        out = torch.zeros(cfg.num_hidden_layers, nh)
        for layer_idx, layer in enumerate(m.model.layers):
            v = (layer.input_layernorm(ee) @ layer.self_attn.v_proj.weight.T).view(len(ids), nkv, dh)
            w_o = layer.self_attn.o_proj.weight
            sandwich = hasattr(layer, "pre_feedforward_layernorm")  # Gemma 2/3: attention output is normed
            for h in range(nh):
                o = v[:, h // (nh // nkv)] @ w_o[:, h * dh:(h + 1) * dh].T
                if sandwich:
                    o = layer.post_attention_layernorm(o)
                logits = m.model.norm(o) @ m.lm_head.weight.T
                ok = n = 0
                for s in sets.values():
                    sid = list(s.ids)
                    pred = logits[[row[t] for t in sid[:-1]]][:, sid].argmax(-1)
                    ok += int((pred == torch.arange(1, len(sid))).sum())
                    n += len(sid) - 1
                out[layer_idx, h] = ok / n
    return out


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3-mqa"])
def test_succession_score_matches_raw_torch_on_tiny_models(family):
    # Gemma's post-attention norm gain (1 + w) must be part of each head's OV output
    words = [w for name in ("days", "months", "letters", "ordinal_words") for w in ORDINAL_SEQUENCES[name]]
    tok = word_tokenizer(words)
    assert len(tok) <= VOCAB
    lm = dataclasses.replace(tiny_model(family, seed=3), tokenizer=tok)
    if family.startswith("gemma"):  # random init leaves the norm gains at 0 (gain 1): make them matter
        with torch.no_grad():
            for layer in lm.model.model.layers:
                layer.post_attention_layernorm.weight.normal_(0, 1.0)
    res = scan_model(lm, ScanConfig(detectors=("successor",), causal=False))
    got = torch.tensor(res.matrix("successor"), dtype=torch.float32)
    want = raw_succession(lm, tok)
    assert torch.allclose(got, want, atol=1e-6), (got, want)
    assert got.std() > 0  # random heads differ: the comparison is not between constants
