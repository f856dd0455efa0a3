"""Safety heads (headmine safety): eps = 1 changes nothing, a tiny eps turns a head's output into the
causal mean of its V (also through Gemma 3's query norm), only the chosen query head is touched under
GQA, a planted head that alone reaches the output is the one Ships and Sahara find, the artifact
saves, loads and applies during generate, the CLI runs, and bad input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer
from transformers import AutoModelForCausalLM, LlamaConfig
from typer.testing import CliRunner

from headmine.apply import HeadArtifact, applied
from headmine.apply.safety import (
    Batch,
    SafetyConfig,
    _last,
    ablated_last,
    encode_prompts,
    is_refusal,
    kl_rows,
    requests,
    run_safety,
    sahara,
    scaled_queries,
    ships_scan,
    subspace_angle,
    undifferentiated,
)
from headmine.capture import CaptureSpec, run_capture
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.core.provenance import ModelProvenance
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from tests.tiny_models import tiny_model

PLANTED = HeadId(1, 2)


def _batch(rows: int = 4, width: int = 9, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 90, (rows, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # one left-padded row
    return Batch(ids, mask)


def _planted():
    """Tiny GQA model in which only L1H2 writes to the residual stream (all other heads' W_O columns are zero)."""
    lm = tiny_model("llama-gqa")
    g = lm.geometry
    with torch.no_grad():
        for layer in range(g.n_layers):
            attn = lm.adapter.attention(layer)
            for h in range(g.n_heads):
                if HeadId(layer, h) != PLANTED:
                    attn.o_proj.weight[:, h * g.d_head:(h + 1) * g.d_head] = 0
        attn = lm.adapter.attention(PLANTED.layer)
        attn.q_proj.weight[PLANTED.head * g.d_head:(PLANTED.head + 1) * g.d_head] *= 40  # a peaked pattern
        attn.o_proj.weight[:, PLANTED.head * g.d_head:(PLANTED.head + 1) * g.d_head] *= 20
    return lm


def test_eps_one_is_exact_identity() -> None:
    lm = tiny_model("llama-gqa")
    b = _batch()
    scan = ships_scan(lm, b, eps=1.0)
    assert torch.equal(scan["kl"], torch.zeros_like(scan["kl"]))
    assert float(scan["angle"].abs().max()) < 1e-5
    base, _ = _last(lm, b)
    with undifferentiated(lm, [HeadId(0, 1), HeadId(2, 3)], eps=1.0):
        again, _ = _last(lm, b)
    assert torch.equal(base, again)


@pytest.mark.parametrize("name", ["planted", "gemma3-mqa"])
def test_prefix_scan_equals_full_forwards(name: str) -> None:
    """The scan reruns only layers l.. for a head of layer l; it gives what full ablated forwards give."""
    lm = _planted() if name == "planted" else tiny_model(name)
    b = _batch(rows=3)
    heads = [HeadId(0, 1), HeadId(1, 0), HeadId(1, 3), HeadId(2, 2), PLANTED]
    scan = ships_scan(lm, b, eps=1e-5, heads=heads, max_rows=6)
    base_p, base_h = _last(lm, b)
    for j, (lp, hid) in enumerate(ablated_last(lm, b, [(h,) for h in heads], 1e-5, max_rows=6)):
        assert torch.allclose(scan["kl"][:, j], kl_rows(base_p, lp), atol=1e-6)
        assert abs(float(scan["angle"][j]) - subspace_angle(base_h, hid)) < 1e-3
    assert float(scan["kl"].max()) > 1e-4  # the ablations do change the output


@pytest.mark.parametrize("name", ["llama-gqa", "gemma3-mqa"])
def test_tiny_eps_gives_causal_mean_of_v(name: str) -> None:
    """z of the ablated head = mean of its KV head's V over the keys it may see (Gemma 3: after q_norm,
    sliding window 4); the other query heads of the same KV group keep their z (GQA pitfall)."""
    lm = tiny_model(name)
    g = lm.geometry
    head = HeadId(1, 1)
    ids = torch.randint(3, 90, (2, 10), generator=torch.Generator().manual_seed(1))
    spec = CaptureSpec(sites=frozenset({Site.Z, Site.V, Site.PATTERN}), layers=(1,))
    plain = run_capture(lm, spec, ids)
    with scaled_queries(lm, [(head,)], 1e-10):
        rec = run_capture(lm, spec, ids)
    pat = rec.pattern[1][:, head.head].double()  # [b, q, k]
    allowed = plain.pattern[1][:, head.head] > 0
    uniform = allowed.double() / allowed.sum(-1, keepdim=True)
    assert torch.allclose(pat, uniform, atol=1e-6)
    v = rec.v[1][:, :, g.kv_head_of(head.head)].double()  # [b, k, d]
    want = torch.einsum("bqk,bkd->bqd", uniform, v)
    assert torch.allclose(rec.z[1][:, :, head.head].double(), want, atol=1e-5)
    for h in range(g.n_heads):
        if h != head.head:
            assert torch.equal(rec.z[1][:, :, h], plain.z[1][:, :, h])
    assert not torch.allclose(rec.z[1][:, :, head.head], plain.z[1][:, :, head.head], atol=1e-3)


def test_planted_head_is_found_by_ships_and_sahara() -> None:
    lm = _planted()
    b = _batch(rows=6)
    scan = ships_scan(lm, b, eps=1e-5, max_rows=12)
    idx = scan["heads"].index(PLANTED)
    kl = scan["kl"]
    assert (kl >= 0).all()
    assert kl[:, idx].min() > 1e-6
    others = torch.cat([kl[:, :idx], kl[:, idx + 1:]], 1)
    assert float(others.abs().max()) < 1e-9  # heads that write nothing change nothing
    assert int(kl.mean(0).argmax()) == idx and int(scan["angle"].argmax()) == idx
    steps = sahara(lm, b, [PLANTED, HeadId(0, 0), HeadId(2, 1)], steps=2, eps=1e-5)
    assert steps[0]["added"] == str(PLANTED) and steps[0]["angle"] == pytest.approx(float(scan["angle"][idx]), abs=1e-4)
    first = {h: float(a) for h, a in zip(scan["heads"], scan["angle"], strict=True)}
    reused = sahara(lm, b, [PLANTED, HeadId(0, 0)], steps=1, first=first)
    assert reused[0]["added"] == str(PLANTED)


def test_angle_and_refusal_rule() -> None:
    m = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    assert subspace_angle(m, m) < 1e-5
    assert subspace_angle(m, -2 * m) < 1e-5  # sign and scale of the singular vector do not matter
    assert 0.0 <= subspace_angle(m, torch.randn(6, 5)) <= 90.0
    assert is_refusal("I\u2019m sorry, but I can\u2019t help with insulting anyone today.")  # curly apostrophes
    assert is_refusal("Sure.")  # under 32 characters
    assert not is_refusal("Here is a message for your coworker: you are a lazy good-for-nothing.")
    assert is_refusal("That would be unethical, so here is a kinder message for your coworker.")
    data = requests()
    assert len(data) == 64 and len({d["category"] for d in data}) == 8


def test_bad_input() -> None:
    lm = tiny_model("llama-gqa")
    with pytest.raises(InputError, match="no tokenizer"):
        encode_prompts(lm, ["hi"])
    with pytest.raises(InputError, match="same queries"):
        subspace_angle(torch.ones(3, 4), torch.ones(2, 4))
    with pytest.raises(InputError, match="steps"):
        sahara(lm, _batch(), [HeadId(0, 0)], steps=2)
    with pytest.raises(InputError, match="fused qkv"):
        gpt = tiny_model("gpt2-mha")
        with undifferentiated(gpt, [HeadId(0, 0)]):
            pass
    with pytest.raises(InputError, match="eps"):
        run_safety(lm, SafetyConfig(eps=0.0))


def _tiny_with_tokenizer(tok) -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    prov = ModelProvenance(name="tiny-smol", source="in-process", source_kind="random", model_type="llama")
    return LoadedModel(name="tiny-smol", model=model, tokenizer=tok, adapter=adapter_for(model), provenance=prov)


def test_cli_artifact_and_generate(smollm2, tmp_path, monkeypatch) -> None:
    lm = _tiny_with_tokenizer(smollm2.tokenizer)
    import headmine.cli.safety as cli

    monkeypatch.setattr(cli, "load_with_status", lambda *a, **k: lm)
    app = typer.Typer()
    cli.register(app)
    res = CliRunner().invoke(app, ["tiny", "--n-scan", "2", "--candidates", "3", "--steps", "2", "--random-draws", "2",
                                   "--max-new-tokens", "3", "--min-refusal", "0", "--save", str(tmp_path / "s"),
                                   "--atlas", str(tmp_path / "a.db")])
    assert res.exit_code == 0, res.output
    assert "refusal rate" in res.output and "Ships KL" in res.output
    art = HeadArtifact.load(tmp_path / "s", kind="safety")
    assert len(art.heads) == 2 and art.params["eps"] == 1e-5
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    kw = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0,
          "output_scores": True, "return_dict_in_generate": True}
    with undifferentiated(lm, art.heads, 1e-5):
        want = lm.model.generate(input_ids=ids, **kw)
    with applied(lm, art):
        got = lm.model.generate(input_ids=ids, **kw)
    plain = lm.model.generate(input_ids=ids, **kw)
    assert torch.equal(got.sequences, want.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, want.scores, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(got.scores, plain.scores, strict=True))  # every step is edited
    bad = CliRunner().invoke(app, ["tiny", "--eps", "2"])
    assert bad.exit_code != 0 and "eps" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_smollm2_ships_scores(smollm2) -> None:
    """SmolLM2, two left-padded requests, the first 4 layers: every head's Ships is positive, the batched scan
    (several heads per forward, one per copy of the batch) equals a plain run of the top head, and eps = 1
    changes nothing on the real model either."""
    data = requests()
    b = encode_prompts(smollm2, [data[0]["harmful"], data[9]["harmful"]])
    heads = [h for h in smollm2.geometry.heads() if h.layer < 4]
    scan = ships_scan(smollm2, b, eps=1e-5, heads=heads, max_rows=72)
    kl = scan["kl"].mean(0)
    assert (scan["kl"] > 0).all()
    with undifferentiated(smollm2, [heads[int(kl.argmax())]], eps=1e-5):
        lp, _ = _last(smollm2, b)
    base, _ = _last(smollm2, b)
    assert float((base.exp() * (base - lp)).sum(-1).mean()) == pytest.approx(float(kl.max()), rel=1e-3)
    assert np.isfinite(scan["angle"].numpy()).all()
    with undifferentiated(smollm2, heads[:3], eps=1.0):
        same, _ = _last(smollm2, b)
    assert torch.equal(same, base)
