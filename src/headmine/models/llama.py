"""Llama-like decoders: Llama, SmolLM2, Mistral, Qwen2 (RoPE, RMSNorm, GQA, separate q/k/v)."""

from headmine.models.base import ModelAdapter, register_adapter


@register_adapter
class LlamaAdapter(ModelAdapter):
    families = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "model.layers"
    attn_name = "self_attn"
    out_proj_name = "self_attn.o_proj"
    final_norm_path = "model.norm"
    embed_path = "model.embed_tokens"
