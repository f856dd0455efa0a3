"""OPT decoders. The model multiplies q_proj's output by 1/sqrt(d_head) itself; W_Q here is raw."""

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
