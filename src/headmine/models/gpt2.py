"""GPT-2: fused ``c_attn`` and Conv1D layers, whose weights are stored [in, out] (transposed)."""

import torch

from headmine.core.ids import Site
from headmine.models.base import ModelAdapter, QKVHookPoint, register_adapter, submodule, weight_of


@register_adapter
class GPT2Adapter(ModelAdapter):
    families = ("gpt2",)
    layers_path = "transformer.h"
    attn_name = "attn"
    out_proj_name = "attn.c_proj"
    final_norm_path = "transformer.ln_f"
    embed_path = "transformer.wte"
    qkv_names = None
    out_proj_in_axis = 0  # Conv1D stores [in, out]
    norm_kind = "layer"
    norm_eps_attr = "eps"
    attn_norm_name = "ln_1"
    recomputes_patterns = True  # q, k from c_attn through qkv_hook_points; no RoPE; scaling from the module

    def _qkv_weight(self, layer: int, which: int) -> torch.Tensor:
        g = self.geometry
        w = weight_of(submodule(self.attention(layer), "c_attn"))  # Conv1D: [d_model, 3*d_model]
        part = w[:, which * g.d_model : (which + 1) * g.d_model]
        return part.view(g.d_model, g.n_heads, g.d_head).permute(1, 0, 2)

    def W_O(self, layer: int) -> torch.Tensor:
        g = self.geometry
        return weight_of(self.out_proj(layer)).view(g.n_heads, g.d_head, g.d_model)  # Conv1D: [H*d_head, d_model]

    def qkv_hook_points(self, layer: int) -> dict[Site, QKVHookPoint]:
        g, c_attn = self.geometry, submodule(self.attention(layer), "c_attn")

        def split(which: int):
            return lambda t: t[..., which * g.d_model : (which + 1) * g.d_model].unflatten(-1, (g.n_heads, g.d_head))

        return {site: (c_attn, split(i)) for i, site in enumerate((Site.Q, Site.K, Site.V))}
