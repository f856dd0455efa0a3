"""OPT decoders. The model multiplies q_proj's output by 1/sqrt(d_head) itself; W_Q here is raw.

OPT-350m is post-norm (``do_layer_norm_before=False``): no norm in front of attention and no final
norm (its ``final_layer_norm`` is None). Its ``project_out`` (hidden -> word_embed_proj_dim) before
the unembedding is not modelled here.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from headmine.models.base import AttentionScoring, ModelAdapter, register_adapter


@register_adapter
class OPTAdapter(ModelAdapter):
    families = ("opt",)
    layers_path = "model.decoder.layers"
    attn_name = "self_attn"
    out_proj_name = "self_attn.out_proj"
    mlp_name = None  # OPT's MLP is fc1/fc2 inline in the decoder layer
    final_norm_path = "model.decoder.final_layer_norm"
    embed_path = "model.decoder.embed_tokens"
    norm_kind = "layer"
    norm_eps_attr = "eps"
    attn_norm_name = "self_attn_layer_norm"
    recomputes_patterns = True

    def attention_qk(self, layer: int, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """OPT scales q by 1/sqrt(d_head) before the kernel (which then uses scaling 1.0): the same order here."""
        q, k = super().attention_qk(layer, inputs)
        attn: Any = self.attention(layer)
        return q * float(attn.scaling), k

    def attention_scoring(self, layer: int) -> AttentionScoring:
        return AttentionScoring(scaling=1.0, causal=True)

    def attn_norm(self, layer: int) -> nn.Module | None:
        return super().attn_norm(layer) if getattr(self.config, "do_layer_norm_before", True) else None
