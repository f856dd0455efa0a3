"""Direct logit attribution on sandwich-norm blocks (Gemma 2/3: ``post_attention_layernorm`` and
``post_feedforward_layernorm``): each head's contribution equals a raw-torch oracle that passes the head's
result through the post-attention norm with the scale of the block's whole output, then through the final
norm with its scale frozen; and nothing structural is left in ``rest``.

Found on Gemma 3 270M's IOI run: before the fix DLA attributed the heads' raw ``z @ W_O`` (before a norm that
rescales it by orders of magnitude), so every head's DLA was below 0.3% of the logit difference while path
patching gave one head 74%.
"""

from __future__ import annotations

import pytest
import torch

from headmine.causal.direct_logit_attribution import direct_logit_attribution
from headmine.causal.metrics import AnswerMetric
from tests.adapters.test_norm_conformance import randomised_norms
from tests.tiny_models import VOCAB

B, T = 3, 7


def _setup(name: str):
    lm = randomised_norms(name)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones_like(ids)
    end = torch.full((B,), T - 1)
    tgt, wrong = torch.randint(0, VOCAB, (B,), generator=g), torch.randint(0, VOCAB, (B,), generator=g)
    metric = AnswerMetric(kind="logit_diff", end_pos=end, target_id=tgt, wrong_id=wrong)
    return lm, ids, mask, end, tgt, wrong, metric


@pytest.mark.parametrize("name", ["gemma3-mqa", "gemma2-gqa"])
def test_head_dla_matches_a_raw_oracle_through_the_post_norm(name):
    lm, ids, mask, end, tgt, wrong, metric = _setup(name)
    model = lm.model
    layers = model.model.layers
    n_h, d = model.config.num_attention_heads, model.config.head_dim
    box: dict = {}
    hooks = [layers[i].self_attn.o_proj.register_forward_pre_hook(
        lambda mod, a, i=i: box.__setitem__(("z", i), a[0].detach())) for i in range(len(layers))]
    hooks += [layers[i].self_attn.o_proj.register_forward_hook(
        lambda mod, a, o, i=i: box.__setitem__(("out", i), o.detach())) for i in range(len(layers))]
    hooks.append(model.model.norm.register_forward_pre_hook(lambda mod, a: box.__setitem__("final", a[0].detach())))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    res = direct_logit_attribution(lm, ids, mask, metric)
    rows = torch.arange(B)

    def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
        return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    x_final = box["final"][rows, end]
    final = model.model.norm
    u = model.lm_head.weight[tgt] - model.lm_head.weight[wrong]
    for layer, head in [(0, 1), (1, 3), (2, 0)]:
        post = layers[layer].post_attention_layernorm
        z = box[("z", layer)][rows, end].unflatten(-1, (n_h, d))[:, head]
        w_o = layers[layer].self_attn.o_proj.weight[:, head * d:(head + 1) * d]
        r = z @ w_o.T
        written = r / rms_scale(box[("out", layer)][rows, end], post.eps) * (1 + post.weight)
        want = (written / rms_scale(x_final, final.eps) * (1 + final.weight) * u).sum(-1)
        torch.testing.assert_close(res.heads[layer, head], want, rtol=1e-4, atol=1e-4)


def test_nothing_structural_is_left_in_rest_on_gemma3():
    """Gemma 3 has no final soft-cap and bias-free RMSNorms: heads, MLPs and embedding carry the whole metric."""
    lm, ids, mask, _, _, _, metric = _setup("gemma3-mqa")
    assert lm.adapter.final_logit_softcap() is None
    res = direct_logit_attribution(lm, ids, mask, metric)
    assert res.total.abs().min() > 1e-3  # a metric that is not trivially zero
    assert res.rest.abs().max() < 1e-4 * max(1.0, float(res.total.abs().max()))
    torch.testing.assert_close(res.component_sum(), res.total, rtol=1e-4, atol=1e-4)
