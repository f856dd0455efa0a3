"""Llama-like decoders: Llama, SmolLM2, Mistral, Qwen2 (RoPE, RMSNorm, GQA, separate q/k/v)."""

from headmine.models.base import AttentionScoring, ModelAdapter, register_adapter


@register_adapter
class LlamaAdapter(ModelAdapter):
    families = ("llama", "mistral", "qwen2", "qwen3")
    layers_path = "model.layers"
    attn_name = "self_attn"
    out_proj_name = "self_attn.o_proj"
    final_norm_path = "model.norm"
    embed_path = "model.embed_tokens"
    mlp_norm_name = "post_attention_layernorm"
    recomputes_patterns = True

    def attention_scoring(self, layer: int) -> AttentionScoring:
        """Mistral keeps its window on the config (every layer slides); Qwen 2/3 set it per layer."""
        scoring = super().attention_scoring(layer)
        window = getattr(self.config, "sliding_window", None)
        if self.config.model_type == "mistral" and window and scoring.window is None:
            return AttentionScoring(scaling=scoring.scaling, causal=scoring.causal, window=int(window))
        return scoring
