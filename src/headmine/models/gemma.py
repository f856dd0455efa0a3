"""Gemma 1, 2 and 3 text decoders.

Same module paths as Llama. Every Gemma RMSNorm stores ``gain - 1`` (the module scales by
``1 + weight``). Gemma 2/3 blocks add "sandwich" norms: attention's and the MLP's outputs are
RMS-normed before the residual add. Gemma 2 soft-caps its final logits. Handled by the model
itself after our hook points: q/k RMS norms (Gemma 3), attention logit soft-capping (Gemma 2),
sliding-window layers, embeddings scaled by sqrt(d_model). The pattern recompute reads q/k norms,
windows and the attention soft-cap through ``attention_qk`` / ``attention_scoring``.
"""

from typing import Any, ClassVar

from headmine.models.base import AttentionScoring, ModelAdapter, register_adapter


@register_adapter
class GemmaAdapter(ModelAdapter):
    families: ClassVar[tuple[str, ...]] = ("gemma",)
    layers_path = "model.layers"
    attn_name = "self_attn"
    out_proj_name = "self_attn.o_proj"
    final_norm_path = "model.norm"
    embed_path = "model.embed_tokens"
    norm_eps_attr = "eps"
    norm_gain_offset = 1.0
    mlp_norm_name = "post_attention_layernorm"
    recomputes_patterns = True


@register_adapter
class Gemma2Adapter(GemmaAdapter):
    families = ("gemma2", "gemma3", "gemma3_text")
    attn_post_norm_name = "post_attention_layernorm"
    mlp_post_norm_name = "post_feedforward_layernorm"
    mlp_norm_name = "pre_feedforward_layernorm"

    def attention_scoring(self, layer: int) -> AttentionScoring:
        """Gemma 2 soft-caps its attention logits (``attn_logit_softcapping``); Gemma 3 keeps the config
        field but its attention passes no cap to the kernel."""
        scoring = super().attention_scoring(layer)
        cap = getattr(self.attention(layer), "attn_logit_softcapping", None)
        if self.config.model_type != "gemma2" or not cap:
            return scoring
        return AttentionScoring(scaling=scoring.scaling, causal=scoring.causal, window=scoring.window, softcap=float(cap))

    def final_logit_softcap(self) -> float | None:
        cap: Any = getattr(self.config, "final_logit_softcapping", None)
        return float(cap) if cap else None
