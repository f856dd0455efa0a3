"""The shipped ``toy-induction`` checkpoint, checked with plain transformers and raw torch (no headmine code).

Ground truth it must keep: attention-only (MLPs exactly zero), induction heads in layer 1 far above layer 0,
a clear previous-token head in layer 0, and near-zero loss on the second copy of a repeated sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

FOLDER = Path(__file__).resolve().parents[2] / "src" / "headmine" / "data" / "toy_induction"
BOS, FIRST_CONTENT, N_CONTENT = 1, 4, 64
LENGTHS = (12, 24, 36)
BATCH = 8


@pytest.fixture(scope="module")
def toy():
    if not (FOLDER / "config.json").exists():
        pytest.fail(
            f"the toy-induction checkpoint is missing from {FOLDER}; run scripts/train_toy_induction.py"
        )
    model = AutoModelForCausalLM.from_pretrained(FOLDER, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(FOLDER)
    return model, tok


@pytest.fixture(scope="module")
def measured(toy):
    """Per-head (induction, previous-token) scores and split losses on held-out ``<bos> r r`` sequences."""
    model, _ = toy
    gen = torch.Generator().manual_seed(1234)
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    ind = torch.zeros(n_layers, n_heads)
    prev = torch.zeros(n_layers, n_heads)
    first, second = [], []
    for length in LENGTHS:
        r = torch.rand(BATCH, N_CONTENT, generator=gen).argsort(dim=1)[:, :length] + FIRST_CONTENT
        ids = torch.cat([torch.full((BATCH, 1), BOS), r, r], dim=1)
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True)
        pattern = torch.stack(out.attentions, dim=1)  # (batch, layer, head, q, k)
        q = torch.arange(length + 1, 2 * length + 1)
        ind += pattern[..., q, q - (length - 1)].mean(dim=(0, -1))
        p = torch.arange(1, 2 * length + 1)
        prev += pattern[..., p, p - 1].mean(dim=(0, -1))
        ce = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        first.append(ce[:, :length].mean())
        second.append(ce[:, length + 1 :].mean())  # predictions of positions L+2..2L
    n = len(LENGTHS)
    return {
        "induction": ind / n,
        "previous_token": prev / n,
        "first_loss": float(torch.stack(first).mean()),
        "second_loss": float(torch.stack(second).mean()),
    }


def test_loads_as_plain_llama_with_bos_tokenizer(toy):
    model, tok = toy
    cfg = model.config
    assert cfg.model_type == "llama"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 4, 4)
    assert (cfg.hidden_size, cfg.head_dim) == (64, 16)
    assert cfg.max_position_embeddings >= 128
    assert "attention-only" in cfg.headmine_note
    assert model.dtype == torch.float32
    ids = tok("t3 t7 t3")["input_ids"]
    assert ids[0] == tok.bos_token_id == BOS
    assert ids == [BOS, FIRST_CONTENT + 3, FIRST_CONTENT + 7, FIRST_CONTENT + 3]
    assert len(tok) == cfg.vocab_size == FIRST_CONTENT + N_CONTENT
    files = {f.name for f in FOLDER.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)


def test_attention_only(toy):
    model, _ = toy
    for layer in model.model.layers:
        for name, p in layer.mlp.named_parameters():
            assert not p.any(), f"MLP weight {name} is not zero"


def test_induction_heads_in_layer_1(measured):
    ind = measured["induction"]
    assert ind[0].max() < 0.1, ind
    assert (ind[1] > 0.9).sum() >= 2, ind
    assert ind[1].mean() > 10 * ind[0].mean(), ind


def test_previous_token_head_in_layer_0(measured):
    prev = measured["previous_token"]
    assert prev[0].max() > 0.8, prev
    assert prev[0].max() > 4 * prev[1].max(), prev


def test_second_repeat_is_solved(measured):
    assert measured["second_loss"] < 0.05, measured
    assert measured["first_loss"] > 3.5, measured  # the first copy is random: nothing to predict


def test_training_report_matches(measured):
    report = json.loads((FOLDER / "training_report.json").read_text())
    assert report["final_eval"]["losses"]["second_repeat"] < 0.05
    heads = {(h["layer"], h["head"]): h for h in report["heads"]}
    assert len(heads) == 8
    best = max(heads, key=lambda k: heads[k]["induction"])
    assert best[0] == 1 and measured["induction"][best] > 0.9
