"""GPT-NeoX / Pythia: fused ``query_key_value`` laid out per head as [q_h, k_h, v_h]."""

import torch

from headmine.core.ids import Site
from headmine.models.base import ModelAdapter, QKVHookPoint, register_adapter, submodule, weight_of


@register_adapter
class GPTNeoXAdapter(ModelAdapter):
    families = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    attn_name = "attention"
    out_proj_name = "attention.dense"
    final_norm_path = "gpt_neox.final_layer_norm"
    embed_path = "gpt_neox.embed_in"
    qkv_names = None
    norm_kind = "layer"
    norm_eps_attr = "eps"
    recomputes_patterns = True  # q, k from the fused projection; the family's partial RoPE

    def _qkv_weight(self, layer: int, which: int) -> torch.Tensor:
        g = self.geometry
        w = weight_of(submodule(self.attention(layer), "query_key_value"))  # [H*3*d_head, d_model]
        return w.view(g.n_heads, 3, g.d_head, g.d_model)[:, which].transpose(1, 2)

    def qkv_hook_points(self, layer: int) -> dict[Site, QKVHookPoint]:
        g, fused = self.geometry, submodule(self.attention(layer), "query_key_value")

        def split(which: int):
            return lambda t: t.unflatten(-1, (g.n_heads, 3, g.d_head))[..., which, :]

        return {site: (fused, split(i)) for i, site in enumerate((Site.Q, Site.K, Site.V))}
