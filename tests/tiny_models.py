"""Tiny random HF models, one per registered family and attention variant (MHA, GQA, MQA), built in-process."""

from __future__ import annotations

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
)

from headmine.core.provenance import ModelProvenance
from headmine.models.families import adapter_for
from headmine.models.loading import LoadedModel

VOCAB = 97


def _llama_like(cls, n_kv: int, **extra):
    return cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=n_kv, max_position_embeddings=64, head_dim=8, **extra)


CONFIGS = {
    "llama-mha": lambda: _llama_like(LlamaConfig, 4),
    "llama-gqa": lambda: _llama_like(LlamaConfig, 2),
    "llama-mqa": lambda: _llama_like(LlamaConfig, 1),
    "mistral-gqa": lambda: _llama_like(MistralConfig, 2, sliding_window=None),
    "qwen2-gqa": lambda: _llama_like(Qwen2Config, 2),
    "gemma2-gqa": lambda: _llama_like(Gemma2Config, 2, query_pre_attn_scalar=8),
    "gemma3-mqa": lambda: _llama_like(Gemma3TextConfig, 1, query_pre_attn_scalar=8, sliding_window=4),
    "gpt2-mha": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64),
    "gpt_neox-mha": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                          num_attention_heads=4, max_position_embeddings=64, rotary_pct=0.5),
    "opt-mha": lambda: OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=3, num_attention_heads=4,
                                 max_position_embeddings=64, word_embed_proj_dim=32),
    "bert-mha": lambda: BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                   num_attention_heads=4, max_position_embeddings=64),
}


def tiny_model(name: str, seed: int = 0) -> LoadedModel:
    """A LoadedModel around a randomly initialised tiny model of the given family/variant (no tokenizer)."""
    torch.manual_seed(seed)
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    auto = AutoModel if name.startswith("bert") else AutoModelForCausalLM
    model = auto.from_config(config, attn_implementation="eager").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    # random biases where the family has them, so bias handling is exercised
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor) and m.bias.dim() == 1:
                m.bias.normal_(0, 0.02)
    adapter = adapter_for(model)
    prov = ModelProvenance(name=name, source="in-process", source_kind="random", model_type=config.model_type)
    return LoadedModel(name=name, model=model, tokenizer=None, adapter=adapter, provenance=prov)


def blank_llama(*, vocab_size: int = 24, d_model: int = 32, n_heads: int = 4, d_head: int = 8, n_layers: int = 2,
                d_mlp: int = 8) -> LlamaForCausalLM:
    """A tiny eager Llama with every weight zero and every RMSNorm gain one, frozen: the blank that planted-head
    tests write their circuits into (a head, an MLP unit, an unembedding row at a time)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_heads, head_dim=d_head, max_position_embeddings=64,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).eval()
    m = model.model
    with torch.no_grad():
        for p in model.parameters():
            p.requires_grad_(False)
            p.zero_()
        for norm in [m.norm] + [x for lay in m.layers for x in (lay.input_layernorm, lay.post_attention_layernorm)]:
            norm.weight.fill_(1.0)
    return model


def hf_attentions(lm: LoadedModel, ids: torch.Tensor) -> list[torch.Tensor]:
    """The model's own attention probabilities per layer ([b, h, q, k], eager), the oracle the detector
    scores are checked against."""
    with torch.no_grad():
        return list(lm.model(input_ids=ids, output_attentions=True).attentions)
