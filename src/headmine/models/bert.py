"""BERT encoders (e.g. all-MiniLM-L6-v2): bidirectional attention, no unembedding.

The output projection is ``attention.output.dense``; its output is added to the residual and
layer-normed inside ``BertSelfOutput``, so per-head results sum to the dense output only.
"""

from headmine.models.base import ModelAdapter, register_adapter


@register_adapter
class BertAdapter(ModelAdapter):
    families = ("bert",)
    is_causal = False
    layers_path = "encoder.layer"
    attn_name = "attention.self"
    out_proj_name = "attention.output.dense"
    mlp_name = "intermediate"
    embed_path = "embeddings.word_embeddings"
    unembed_path = None
    qkv_names = ("query", "key", "value")
    norm_kind = "layer"
    norm_eps_attr = "eps"
    attn_norm_name = None  # post-norm: attention reads the previous block's normed output
    recomputes_patterns = True  # bidirectional (the module's is_causal is False) + padding mask
