"""The model adapter contract: where the attention pieces live and how to slice weights per head.

An adapter is the ONLY code that knows HuggingFace module paths. Each family subclasses
``ModelAdapter`` in its own small file, sets the module paths, and overrides weight slicing where
the layout differs (GPT-2's Conv1D is transposed; GPT-NeoX fuses q/k/v per head). It also owns
the norms (as :class:`~headmine.models.norms.NormSpec`: kind, effective gain, bias, eps), the
post-norms, the unembedding and final-logit soft-capping: consumers ask it instead of reading
modules, so a new family is fully described by its adapter file.

Weight conventions (TransformerLens vocabulary): ``W_Q[l]`` is ``[head, d_model, d_head]``,
``W_K[l]``/``W_V[l]`` are ``[kv_head, d_model, d_head]``, ``W_O[l]`` is ``[head, d_head, d_model]``,
``W_U`` is ``[d_model, vocab]``. Raw projection weights: RoPE, q/k norms (Gemma 3) and OPT's query
scaling are applied by the model after these projections.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import nn

from headmine.core.errors import HeadIndexError, UnsupportedModelError
from headmine.core.ids import HeadId, Site
from headmine.core.registry import Registry
from headmine.models.norms import NormKind, NormSpec


@dataclass(frozen=True, kw_only=True)
class HeadGeometry:
    """Shape of the attention stack. A query head is the unit; ``kv_head_of`` maps it to its KV head."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    vocab_size: int
    n_ctx: int

    def kv_head_of(self, head: int) -> int:
        """KV head shared by query ``head`` (HF's ``repeat_kv``: consecutive query heads share one)."""
        return head // (self.n_heads // self.n_kv_heads)

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def heads(self) -> list[HeadId]:
        return [HeadId(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise HeadIndexError(
                f"layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}",
                "use a 0-indexed layer below the model's layer count (see `headmine info MODEL`)",
            )

    def check_head(self, layer: int, head: int) -> None:
        self.check_layer(layer)
        if not 0 <= head < self.n_heads:
            raise HeadIndexError(
                f"head {head} in layer {layer} is out of range: each layer has heads 0..{self.n_heads - 1}",
                "use a 0-indexed query head below the model's head count (see `headmine info MODEL`)",
            )


@dataclass(frozen=True, kw_only=True)
class AttentionScoring:
    """How one layer turns its post-RoPE q and k into attention logits, as its eager kernel does:
    ``logits = softcap * tanh(q k^T * scaling / softcap)`` (without the cap when ``softcap`` is None),
    then the mask: causal (``causal``) or bidirectional, keys within the last ``window`` positions
    (sliding-window layers: key ``j`` is seen by query ``i`` when ``i - window < j <= i``) and the
    padding mask. The pattern recompute (``headmine.capture.patterns``) reads this from the adapter."""

    scaling: float
    causal: bool
    window: int | None = None
    softcap: float | None = None


# (module, function mapping that module's output to [batch, pos, n, d_head])
QKVHookPoint = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def submodule(root: nn.Module, path: str) -> nn.Module:
    """The module at dotted ``path`` under ``root`` (digits index module lists)."""
    return cast(nn.Module, _get(root, path))


def weight_of(module: Any) -> torch.Tensor:
    """``module.weight`` typed as a tensor (torch types module attributes as ``Tensor | Module``)."""
    return cast(torch.Tensor, module.weight)


def attention_implementation_of(model: nn.Module) -> str:
    """The attention implementation ("eager", "sdpa", ...) the HF ``model`` runs now."""
    config: Any = model.config  # a transformers PreTrainedConfig (torch types it as ``Tensor | Module``)
    implementation: str = config._attn_implementation
    return implementation


class ModelAdapter:
    """Uniform per-head access to one HF model. Subclasses set the class attributes."""

    families: ClassVar[tuple[str, ...]] = ()
    is_causal: ClassVar[bool] = True
    layers_path: ClassVar[str]
    attn_name: ClassVar[str]  # attention module under a layer; returns (attn_output, attn_weights)
    out_proj_name: ClassVar[str]  # output projection under a layer; its input is concat_h z[h]
    mlp_name: ClassVar[str | None] = "mlp"
    final_norm_path: ClassVar[str | None] = None
    embed_path: ClassVar[str]
    unembed_path: ClassVar[str | None] = "lm_head"
    qkv_names: ClassVar[tuple[str, str, str] | None] = ("q_proj", "k_proj", "v_proj")  # under attn
    out_proj_in_axis: ClassVar[int] = 1  # axis of the output projection's weight that reads z (nn.Linear: [out, in])
    # norms: every norm of the family has this kind; eps is read from this module attribute
    norm_kind: ClassVar[NormKind] = "rms"
    norm_eps_attr: ClassVar[str] = "variance_epsilon"
    norm_gain_offset: ClassVar[float] = 0.0  # Gemma stores gain - 1 (the module scales by 1 + weight)
    attn_norm_name: ClassVar[str | None] = "input_layernorm"  # under a layer, in front of attention; None: post-norm
    attn_post_norm_name: ClassVar[str | None] = None  # under a layer: norm on attention's output before the add
    mlp_post_norm_name: ClassVar[str | None] = None  # under a layer: norm on the MLP's output before the add
    mlp_norm_name: ClassVar[str | None] = None  # under a layer: the norm whose output feeds the MLP (None: not declared)
    # patterns under SDPA: True once the family's ``attention_qk`` / ``attention_scoring`` are checked against
    # eager patterns in the conformance suite; other families (plugins) fall back to eager pattern capture
    recomputes_patterns: ClassVar[bool] = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config: Any = model.config
        self.geometry = self._geometry(self.config)

    # ---- geometry -------------------------------------------------------------------------
    def _geometry(self, config: Any) -> HeadGeometry:
        n_heads = config.num_attention_heads
        d_model = config.hidden_size
        return HeadGeometry(
            n_layers=config.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_head=getattr(config, "head_dim", None) or d_model // n_heads,
            d_model=d_model,
            vocab_size=config.vocab_size,
            n_ctx=getattr(config, "max_position_embeddings", None) or 2048,
        )

    # ---- modules ----------------------------------------------------------------------------
    def layers(self) -> list[nn.Module]:
        return list(_get(self.model, self.layers_path))

    def layer(self, layer: int) -> nn.Module:
        self.geometry.check_layer(layer)
        return _get(self.model, self.layers_path)[layer]

    def attention(self, layer: int) -> nn.Module:
        return _get(self.layer(layer), self.attn_name)

    def out_proj(self, layer: int) -> nn.Module:
        return _get(self.layer(layer), self.out_proj_name)

    def mlp(self, layer: int) -> nn.Module | None:
        return _get(self.layer(layer), self.mlp_name) if self.mlp_name else None

    def final_norm(self) -> nn.Module | None:
        return _get(self.model, self.final_norm_path) if self.final_norm_path else None

    def embedding(self) -> nn.Module:
        return _get(self.model, self.embed_path)

    def unembedding(self) -> nn.Module | None:
        return _get(self.model, self.unembed_path) if self.unembed_path else None

    def attn_norm(self, layer: int) -> nn.Module | None:
        """The norm whose output feeds the attention projections (None for post-norm models, e.g. BERT)."""
        return _get(self.layer(layer), self.attn_norm_name) if self.attn_norm_name else None

    def attn_post_norm(self, layer: int) -> nn.Module | None:
        """The norm applied to attention's output before the residual add (Gemma 2/3), else None."""
        return _get(self.layer(layer), self.attn_post_norm_name) if self.attn_post_norm_name else None

    def mlp_norm(self, layer: int) -> nn.Module | None:
        """The norm whose output feeds the MLP (read by nothing else), or None when the family does not declare it."""
        return _get(self.layer(layer), self.mlp_norm_name) if self.mlp_norm_name else None

    def mlp_post_norm(self, layer: int) -> nn.Module | None:
        """The norm applied to the MLP's output before the residual add (Gemma 2/3), else None."""
        return _get(self.layer(layer), self.mlp_post_norm_name) if self.mlp_post_norm_name else None

    def qkv_hook_points(self, layer: int) -> dict[Site, QKVHookPoint]:
        """Modules whose outputs give q, k, v per head (before RoPE / q-k norms)."""
        assert self.qkv_names is not None
        g, attn = self.geometry, self.attention(layer)
        out: dict[Site, QKVHookPoint] = {}
        def split(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: t.unflatten(-1, (n, g.d_head))

        for site, name, n in zip((Site.Q, Site.K, Site.V), self.qkv_names, (g.n_heads, g.n_kv_heads, g.n_kv_heads), strict=False):
            out[site] = (_get(attn, name), split(n))
        return out

    # ---- attention as its kernel sees it (pattern recompute) ---------------------------------
    def attention_inputs(self, layer: int, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The attention module's forward arguments by name (``hidden_states``, ``position_embeddings``,
        ``attention_mask``...), whether the decoder layer passed them by position or by keyword."""
        signature = inspect.signature(self.attention(layer).forward)
        bound = dict(signature.bind_partial(*args, **kwargs).arguments)
        extra: dict[str, Any] = {}
        for name in list(bound):
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                extra = bound.pop(name)
        return {**extra, **bound}

    def attention_scoring(self, layer: int) -> AttentionScoring:
        """Scaling, causality, sliding window and logit soft-cap of ``layer``, read from its attention
        module (transformers 5.x sets ``scaling``, ``is_causal`` and ``sliding_window`` on it)."""
        attn: Any = self.attention(layer)
        window = getattr(attn, "sliding_window", None)
        return AttentionScoring(scaling=float(attn.scaling), causal=bool(getattr(attn, "is_causal", self.is_causal)),
                                window=int(window) if window else None)

    def attention_qk(self, layer: int, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """q ``[batch, n_heads, pos, d_head]`` and k ``[batch, n_kv_heads, pos, d_head]`` exactly as
        ``layer``'s attention kernel receives them (after q/k norms and RoPE), recomputed from the
        module's forward ``inputs`` (``attention_inputs``) with the module's own projections, its
        ``q_norm``/``k_norm`` if it has them (Gemma 3, Qwen 3) and the rotary function of its
        modeling file when the layer is given ``position_embeddings``."""
        attn = self.attention(layer)
        q, k = self._qk_heads(layer, inputs["hidden_states"])  # [batch, pos, n, d_head]
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        if q_norm is not None and k_norm is not None:
            q, k = q_norm(q), k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        rope = inputs.get("position_embeddings")
        if rope is not None:
            cos, sin = rope
            q, k = rotary_function(attn)(q, k, cos, sin)
        return q, k

    def _qk_heads(self, layer: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k per head ``[batch, pos, n, d_head]`` before norms and RoPE, through the q/k hook points
        (a fused projection runs once)."""
        points = self.qkv_hook_points(layer)
        outputs: dict[int, torch.Tensor] = {}
        per_site = []
        for site in (Site.Q, Site.K):
            module, split = points[site]
            if id(module) not in outputs:
                outputs[id(module)] = module(hidden)
            per_site.append(split(outputs[id(module)]))
        return per_site[0], per_site[1]

    # ---- weights ----------------------------------------------------------------------------
    def _linear_in_heads(self, linear: nn.Module, n: int) -> torch.Tensor:
        """nn.Linear weight [n*d_head, d_model] -> [n, d_model, d_head]."""
        w = weight_of(linear)
        return w.view(n, self.geometry.d_head, w.shape[-1]).transpose(1, 2)

    def _qkv_weight(self, layer: int, which: int) -> torch.Tensor:
        """q (0), k (1) or v (2) projection weight as [n, d_model, d_head]; fused families override this."""
        assert self.qkv_names is not None
        n = self.geometry.n_heads if which == 0 else self.geometry.n_kv_heads
        return self._linear_in_heads(_get(self.attention(layer), self.qkv_names[which]), n)

    def W_Q(self, layer: int) -> torch.Tensor:
        return self._qkv_weight(layer, 0)

    def W_K(self, layer: int) -> torch.Tensor:
        return self._qkv_weight(layer, 1)

    def W_V(self, layer: int) -> torch.Tensor:
        return self._qkv_weight(layer, 2)

    def W_O(self, layer: int) -> torch.Tensor:
        """[head, d_head, d_model]: head h's slice of the output projection."""
        g = self.geometry
        w = weight_of(self.out_proj(layer))  # nn.Linear: [d_model, H*d_head]
        return w.T.reshape(g.n_heads, g.d_head, w.shape[0])

    def b_O(self, layer: int) -> torch.Tensor | None:
        return getattr(self.out_proj(layer), "bias", None)

    def out_proj_head_weight(self, layer: int, head: int) -> torch.Tensor:
        """A view into the raw output-projection weight holding the entries that read head ``head``'s z
        (zeroing it in place removes the head; doctor's weight-surgery check does so)."""
        d = self.geometry.d_head
        return weight_of(self.out_proj(layer)).narrow(self.out_proj_in_axis, head * d, d)

    # ---- norms ------------------------------------------------------------------------------
    def norm_spec(self, norm: nn.Module | None) -> NormSpec | None:
        """``norm`` (one of this model's norm modules, or None) read with the family's conventions."""
        if norm is None:
            return None
        return NormSpec.of(norm, self.norm_kind, eps_attr=self.norm_eps_attr, gain_offset=self.norm_gain_offset)

    def final_norm_spec(self) -> NormSpec | None:
        return self.norm_spec(self.final_norm())

    def attn_norm_spec(self, layer: int) -> NormSpec | None:
        return self.norm_spec(self.attn_norm(layer))

    def attn_post_norm_spec(self, layer: int) -> NormSpec | None:
        return self.norm_spec(self.attn_post_norm(layer))

    def mlp_post_norm_spec(self, layer: int) -> NormSpec | None:
        return self.norm_spec(self.mlp_post_norm(layer))

    # ---- unembedding ------------------------------------------------------------------------
    def final_logit_softcap(self) -> float | None:
        """``c`` when the model's logits are ``c * tanh(logits / c)`` (Gemma 2), else None."""
        return None

    def unembed_bias(self) -> torch.Tensor | None:
        """[vocab] bias of the unembedding, or None."""
        unembed = self.unembedding()
        return None if unembed is None else getattr(unembed, "bias", None)

    def unembed(self, normed: torch.Tensor, *, softcap: bool = True) -> torch.Tensor:
        """Logits [..., vocab] of final-normed hidden states [..., d_model]: unembedding, then the
        soft-cap (unless ``softcap=False``: the logits before it, linear in ``normed``)."""
        unembed = self.unembedding()
        if unembed is None:
            raise UnsupportedModelError(f"{type(self.model).__name__} has no unembedding (it is an encoder)")
        logits = unembed(normed)
        cap = self.final_logit_softcap() if softcap else None
        return torch.tanh(logits / cap) * cap if cap else logits

    def readout(self, resid: torch.Tensor, *, softcap: bool = True) -> torch.Tensor:
        """Logits [..., vocab] of residual vectors [..., d_model] (final norm, unembedding, soft-cap), with
        the model's own modules: at the last layer's output this is the model's logits."""
        norm = self.final_norm()
        return self.unembed(resid if norm is None else norm(resid), softcap=softcap)

    def W_U(self) -> torch.Tensor:
        """[d_model, vocab]."""
        unembed = self.unembedding()
        if unembed is None:
            raise UnsupportedModelError(f"{type(self.model).__name__} has no unembedding (it is an encoder)")
        return weight_of(unembed).T

    def W_E(self) -> torch.Tensor:
        """[vocab, d_model] (before any embedding scale such as Gemma's sqrt(d_model))."""
        return weight_of(self.embedding())

    def per_query_head(self, w_kv: torch.Tensor) -> torch.Tensor:
        """Expand a [kv_head, ...] tensor to [head, ...] with the model's GQA mapping."""
        index = torch.tensor([self.geometry.kv_head_of(h) for h in range(self.geometry.n_heads)])
        return w_kv[index.to(w_kv.device)]


def rotary_function(attn: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``apply_rotary_pos_emb`` of the modeling file that defines ``attn`` (the family's own RoPE, e.g.
    GPT-NeoX's partial rotation)."""
    fn = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        raise UnsupportedModelError(
            f"{type(attn).__name__} is given rotary embeddings but its module defines no apply_rotary_pos_emb",
            "capture patterns with eager attention (CaptureSpec(pattern_mode='eager'))",
        )
    return cast(Callable[..., tuple[torch.Tensor, torch.Tensor]], fn)


ADAPTERS: Registry[type[ModelAdapter]] = Registry("model family", UnsupportedModelError, plugin_group="headmine.models")


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: register an adapter under each ``config.model_type`` in ``cls.families``."""
    ADAPTERS.register(*cls.families)(cls)
    return cls

