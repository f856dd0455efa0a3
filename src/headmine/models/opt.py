"""OPT decoders. The model multiplies q_proj's output by 1/sqrt(d_head) itself; W_Q here is raw.

OPT-350m is post-norm (``do_layer_norm_before=False``): no norm in front of attention and no final
norm (its ``final_layer_norm`` is None). Its ``project_out`` (hidden -> word_embed_proj_dim) before
the unembedding is not modelled here.
"""

from torch import nn

from headmine.models.base import ModelAdapter, register_adapter


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

    def attn_norm(self, layer: int) -> nn.Module | None:
        return super().attn_norm(layer) if getattr(self.config, "do_layer_norm_before", True) else None
