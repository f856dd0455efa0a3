"""Gemma 2 and Gemma 3 text decoders.

Same module paths as Llama. Differences that matter to per-head methods, handled by the model
itself after our hook points: q/k RMS norms (Gemma 3), attention logit soft-capping (Gemma 2),
sliding-window layers, embeddings scaled by sqrt(d_model), final logit soft-capping.
"""

from headmine.models.base import ModelAdapter, register_adapter


@register_adapter
class GemmaAdapter(ModelAdapter):
    families = ("gemma", "gemma2", "gemma3", "gemma3_text")
    layers_path = "model.layers"
    attn_name = "self_attn"
    out_proj_name = "self_attn.o_proj"
    final_norm_path = "model.norm"
    embed_path = "model.embed_tokens"
