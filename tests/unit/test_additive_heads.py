"""Subject / relation / mixed heads (causal/factual_recall/additive_heads.py).

- the source-decomposed DLA against a raw-torch oracle (HF attention weights, v_proj outputs, o_proj
  weights, the norms re-implemented by hand) on tiny Llama/GQA and Gemma 3/MQA models, and the sum
  over groups against the head's plain DLA from its captured z;
- a hand-wired 2-layer Llama with a planted subject head (reads the subject, writes its identity),
  relation head (reads the relation cue, writes the relation's answer class) and mixed head (both):
  each is labelled as planted and no other head is, the characterising measures have the planted
  signs, and the held-out read-ablation checks beat random heads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headmine.catalog import head_type_info
from headmine.causal.factual_recall.additive_heads import (
    AdditiveConfig,
    additive_heads,
    classify,
    head_measures,
    read_ablation_check,
    source_dla,
    split_fact_prompts,
)
from headmine.core.errors import TaskError
from headmine.core.ids import HeadId
from headmine.core.provenance import ModelProvenance
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch, pad_batch
from tests.tiny_models import blank_llama, tiny_model


# --------------------------------------------------------------------------- oracle
def _random_facts(vocab: int, lengths: list[int], seed: int = 0) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
    ids, mask = pad_batch(rows, 0)
    groups = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        groups[i, 2:4] = 1          # subject
        groups[i, 4:n] = 2          # relation, END included
    return TokenBatch(input_ids=ids, attention_mask=mask, task="t",
                      meta={"target_id": torch.randint(0, vocab, (len(lengths),), generator=g),
                            "end_pos": torch.tensor(lengths) - 1, "subject_span": torch.tensor([[2, 4]] * len(lengths)),
                            "relation": ["r"] * len(lengths), "token_group": groups})


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).add(eps).sqrt()


def _oracle(lm: LoadedModel, batch: TokenBatch, tokens: list[int], gemma: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[L, H, B, 3, K] by group, [L, H, B, K] plain and END's own part, from HF internals and hand-written norms."""
    model = lm.model
    layers = model.model.layers
    v_out, z_in, o_out, final_in = {}, {}, {}, {}
    hs = []
    for i, lay in enumerate(layers):
        hs.append(lay.self_attn.v_proj.register_forward_hook(lambda m, a, o, i=i: v_out.__setitem__(i, o)))
        hs.append(lay.self_attn.o_proj.register_forward_hook(lambda m, a, o, i=i: z_in.__setitem__(i, a[0])))
        hs.append(lay.self_attn.o_proj.register_forward_hook(lambda m, a, o, i=i: o_out.__setitem__(i, o)))
    hs.append(model.model.norm.register_forward_pre_hook(lambda m, a: final_in.__setitem__(0, a[0])))
    with torch.no_grad():
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True)
    for h in hs:
        h.remove()
    cfg = model.config
    H, KV, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    fin = model.model.norm
    f_gain = (1 + fin.weight.float()) if gemma else fin.weight.float()
    f_eps = fin.eps if gemma else fin.variance_epsilon
    U = model.lm_head.weight.float()[tokens].T  # [D, K]
    B = len(batch)
    by_group = torch.zeros(len(layers), H, B, 3, len(tokens))
    plain = torch.zeros(len(layers), H, B, len(tokens))
    end_part = torch.zeros_like(plain)
    axis = {1: 0, 2: 1, 0: 2}
    for layer, lay in enumerate(layers):
        w_o = lay.self_attn.o_proj.weight.float()  # [D, H*dh]
        for b in range(B):
            e = int(batch.meta["end_pos"][b])
            final_scale = _rms(final_in[0][b, e].float(), f_eps)
            post_scale = _rms(o_out[layer][b, e].float(), lay.post_attention_layernorm.eps) if gemma else None

            def read(c: torch.Tensor, post_scale=post_scale, final_scale=final_scale, lay=lay) -> torch.Tensor:
                if gemma:
                    c = c / post_scale * (1 + lay.post_attention_layernorm.weight.float())
                return (c / final_scale * f_gain) @ U

            for h in range(H):
                kv = h // (H // KV)
                w = w_o[:, h * dh:(h + 1) * dh]
                plain[layer, h, b] = read(w @ z_in[layer][b, e, h * dh:(h + 1) * dh].float())
                for s in range(e + 1):
                    a = out.attentions[layer][b, h, e, s].float()
                    c = w @ (a * v_out[layer][b, s, kv * dh:(kv + 1) * dh].float())
                    by_group[layer, h, b, axis[int(batch.meta["token_group"][b, s])]] += read(c)
                    if s == e:
                        end_part[layer, h, b] = read(c)
    return by_group, plain, end_part


@pytest.mark.parametrize("name", ["llama-gqa", "gemma3-mqa"])
def test_source_dla_matches_raw_torch_oracle_and_sums_to_plain_dla(name: str) -> None:
    lm = tiny_model(name)
    batch = _random_facts(97, [9, 7, 11])
    tokens = [3, 50, 96]
    sd = source_dla(lm, batch, tokens=tokens, batch_size=2)  # two sub-batches of different widths
    want_g, want_p, want_e = _oracle(lm, batch, [int(t) for t in sd.tokens], gemma=name.startswith("gemma"))
    assert sd.by_group.shape == (3, 4, 3, 3, len(sd.tokens))
    assert sd.tokens[:3].tolist() == tokens
    assert torch.allclose(sd.by_group, want_g, atol=1e-5)
    assert torch.allclose(sd.plain, want_p, atol=1e-5)
    assert torch.allclose(sd.end, want_e, atol=1e-5)
    assert torch.allclose(sd.by_group.sum(3), sd.plain, atol=1e-5)
    assert sd.plain.abs().max() > 1e-2  # not a vacuous zero
    tgt = sd.target()
    assert torch.allclose(tgt, sd.target("subject") + sd.target("relation") + sd.target("other"), atol=1e-5)
    assert tgt[0, 0, 1] == sd.plain[0, 0, 1, int(sd.target_col[1])]


# --------------------------------------------------------------------------- planted model
BOS, SUBJ, REL_A, REL_B, FILL, ANS_A, ANS_B = 0, 1, 5, 6, 7, 11, 15
D, NH, DH = 32, 4, 8


def build_planted() -> LoadedModel:
    """L0H0 subject head, L0H1 relation head, L0H2 mixed head; L0H3 and layer 1: random small noise."""
    model = blank_llama(d_model=D, n_heads=NH, d_head=DH)
    m = model.model
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        E = m.embed_tokens.weight
        E[:, 0] = 1.0                                       # constant
        E[BOS, 2] = 1.0
        for i in range(4):
            E[SUBJ + i, 1] = 1.0                            # is-subject
            E[SUBJ + i, 6 + i] = 1.0                        # subject identity
            E[FILL + i, 10 + i] = 1.0
        E[REL_A, 3], E[REL_A, 4] = 1.0, 1.0                 # is-relation, which relation
        E[REL_B, 3], E[REL_B, 5] = 1.0, 1.0
        a0 = m.layers[0].self_attn
        for h, keys in ((0, (1,)), (1, (3,)), (2, (1, 3))):
            a0.q_proj.weight[h * DH + 3, 0] = 4.0
            for k in keys:
                a0.k_proj.weight[h * DH + 3, k] = 4.0
        for i in range(4):                                  # identity -> out dims 16-19 (H0, H2)
            for h in (0, 2):
                a0.v_proj.weight[h * DH + i, 6 + i] = 1.0
                a0.o_proj.weight[16 + i, h * DH + i] = 1.0
        for h, base in ((1, 0), (2, 4)):                    # relation -> class out dims 20/21 (H1, H2)
            a0.v_proj.weight[h * DH + base, 4] = 1.0
            a0.v_proj.weight[h * DH + base + 1, 5] = 1.0
            a0.o_proj.weight[20, h * DH + base] = 1.0
            a0.o_proj.weight[21, h * DH + base + 1] = 1.0
        noise = [(a0, 3)] + [(m.layers[1].self_attn, h) for h in range(NH)]
        for attn, h in noise:
            sl = slice(h * DH, (h + 1) * DH)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.weight[sl] = torch.randn(DH, D, generator=g) * 0.3
            attn.o_proj.weight[:, sl] = torch.randn(D, DH, generator=g) * 0.05
        U = model.lm_head.weight
        for i in range(4):
            U[ANS_A + i, 16 + i], U[ANS_A + i, 20] = 1.0, 1.0
            U[ANS_B + i, 16 + i], U[ANS_B + i, 21] = 1.0, 1.0
    prov = ModelProvenance(name="toy-additive", source="in-process", source_kind="hand-set", model_type="llama")
    return LoadedModel(name="toy-additive", model=model, tokenizer=None, adapter=adapter_for(model), provenance=prov)


def planted_facts(seed: int) -> TokenBatch:
    """BOS F SUBJ F REL: BOS and the first filler 'other', the subject, then the relation template (END = cue)."""
    rng = np.random.default_rng(seed)
    rows, groups, meta = [], [], {"target_id": [], "relation": [], "subject": []}
    for rel, cue, ans in (("A", REL_A, ANS_A), ("B", REL_B, ANS_B)):
        for i in range(4):
            for _ in range(3):
                f1, f2 = (FILL + int(x) for x in rng.integers(0, 4, 2))
                rows.append([BOS, f1, SUBJ + i, f2, cue])
                groups.append([0, 0, 1, 2, 2])
                meta["target_id"].append(ans + i)
                meta["relation"].append(rel)
                meta["subject"].append(f"s{i}")
    ids, mask = pad_batch(rows, 0)
    n = len(rows)
    return TokenBatch(input_ids=ids, attention_mask=mask, task="toy",
                      meta={"target_id": torch.tensor(meta["target_id"]), "end_pos": torch.full((n,), 4),
                            "subject_span": torch.tensor([[2, 3]] * n), "relation": meta["relation"],
                            "subject": meta["subject"], "token_group": torch.tensor(groups)})


ATTRIBUTES = {(f"s{i}", r): a + i for i in range(4) for r, a in (("A", ANS_A), ("B", ANS_B))}


@pytest.fixture(scope="module")
def planted() -> LoadedModel:
    return build_planted()


def test_planted_heads_are_found_and_no_other(planted: LoadedModel) -> None:
    res = additive_heads(planted, planted_facts(0), planted_facts(1), attributes=ATTRIBUTES,
                         config=AdditiveConfig(n_random=10, top_k=3))
    assert res.labels == {"subject": [HeadId(0, 0)], "relation": [HeadId(0, 1)], "mixed": [HeadId(0, 2)]}
    assert res.source == {HeadId(0, 0): "subject", HeadId(0, 1): "relation", HeadId(0, 2): "both"}
    f = res.fit
    share = f["dla_subject"] / (f["dla_subject"] + f["dla_relation"])
    assert share[0, 0] > 0.95 and share[0, 1] < 0.05 and 0.3 < share[0, 2] < 0.7
    # subject head: picks its subject's attribute, and the subject's attribute under the other relation
    assert f["subject_specificity"][0, 0] > 0.5 and f["relation_swap"][0, 0] > 0.5
    # relation head: pushes the relation's answer set, blind to the subject
    assert f["relation_set_push"][0, 1] > 0.5 and abs(float(f["relation_specificity"][0, 1])) < 0.05
    assert abs(float(f["dla_end"][0, 1] - f["dla_relation"][0, 1])) < 0.05  # it reads the cue at END
    # mixed head: a subject-like part plus a relation-like part
    assert f["subject_specificity"][0, 2] > 0.2 and f["relation_set_push"][0, 2] > 0.2
    for kind in ("subject", "relation", "mixed"):
        c = res.checks[kind]
        assert c is not None and c["significant"] and c["effect"] > 0.3 and c["minus_random"] > 0.3
    df = res.frame()
    assert set(df["head"][:3]) == {"L0H0", "L0H1", "L0H2"}  # sorted by fit DLA
    assert dict(zip(df["head"], df["label"], strict=True))["L0H0"] == "subject"
    assert (df["label"] != "").sum() == 3 and df.attrs["checks"]["subject"]["heads"] == ["L0H0"]


def test_noise_head_check_is_not_significant(planted: LoadedModel) -> None:
    """The check can fail: a noise head's subject read moves the attribute no more than random heads do."""
    c = read_ablation_check(planted, planted_facts(1), [HeadId(1, 2)], ("subject",), n_random=10)
    assert not c["significant"] and abs(c["effect"]) < 0.2


def test_bad_inputs_raise_clear_errors(planted: LoadedModel) -> None:
    facts = planted_facts(0)
    bare = TokenBatch(input_ids=facts.input_ids, attention_mask=facts.attention_mask,
                      meta={k: v for k, v in facts.meta.items() if k != "token_group"})
    with pytest.raises(TaskError, match="token_group"):
        source_dla(planted, bare)
    with pytest.raises(TaskError, match="no heads"):
        read_ablation_check(planted, facts, [], ("subject",))


def test_catalog_links_are_defining_tests() -> None:
    for name in ("Subject Head", "Relation Head", "Mixed Head"):
        links = [d for d in head_type_info(name).detectors if d.detector == "additive_heads"]
        assert len(links) == 1 and links[0].kind == "defining_test" and links[0].task == "factual"


def test_classify_needs_the_characterising_behaviour() -> None:
    """A head whose DLA comes from the relation tokens but singles out the subject's answer (it copies an
    answer already formed at END) has the relation as its source, but is not a relation head; a head
    whose subject part does not prefer the subject's own attribute is not a subject head."""
    z = torch.zeros(1, 4)
    m = {"dla": torch.tensor([[2.0, 2.0, 2.0, 0.0]]), "dla_subject": torch.tensor([[2.0, 0.0, 2.0, 0.0]]),
         "dla_relation": torch.tensor([[0.0, 2.0, 0.0, 0.0]]),
         "subject_specificity": torch.tensor([[1.0, 0.0, -0.5, 0.0]]), "relation_specificity": torch.tensor([[0.0, 1.8, 0.0, 0.0]]),
         "relation_set_push": torch.tensor([[0.0, 0.2, 0.0, 0.0]]), "dla_other": z}
    labels, source, tau = classify(m, AdditiveConfig(min_dla=0.5))
    assert labels == {"subject": [HeadId(0, 0)], "relation": [], "mixed": []}
    assert source == {HeadId(0, 0): "subject", HeadId(0, 1): "relation", HeadId(0, 2): "subject"} and tau == 2.0  # median + 3 MAD (MAD 0)
    m["relation_specificity"] = torch.tensor([[0.0, 0.1, 0.0, 0.0]])
    assert classify(m, AdditiveConfig(min_dla=0.5))[0]["relation"] == [HeadId(0, 1)]


@pytest.mark.slow
def test_smollm2_subject_heads_exact_and_confirmed_on_heldout_facts(smollm2: LoadedModel) -> None:
    """On SmolLM2 (countries: capital and language, known facts split by subject): the decomposition sums
    to the plain DLA on real weights; the top subject head picks the subject's own attribute and, on the
    other relation's prompts, still pushes the subject's attribute of this one; mean-ablating the subject
    heads' reads of the subject on held-out facts lowers the answer logit more than random heads."""
    fit, held, attributes = split_fact_prompts(smollm2, ["country_capital", "country_language"])
    held = held.select(list(range(0, len(held), 2)))
    sd = source_dla(smollm2, fit, tokens=sorted(set(attributes.values())))
    assert torch.allclose(sd.by_group.sum(3), sd.plain, atol=1e-4 * float(sd.plain.abs().max()))
    m = head_measures(sd, fit, attributes)
    labels, source, _ = classify(m)
    assert labels["subject"], source
    top = labels["subject"][0]
    assert m["subject_specificity"][top.layer, top.head] > 1.0 and m["relation_swap"][top.layer, top.head] > 0.5
    c = read_ablation_check(smollm2, held, labels["subject"][:4], ("subject",), n_random=5)
    assert c["significant"] and c["effect"] > 1.0 and c["share_random_as_large"] == 0.0
