"""The compact mixed KV cache of ``headmine kv``: streaming KV heads really STORE only sink + recent tokens.

:func:`headmine.apply.kv.mixed_cache` masks streaming heads (DuoAttention's streaming mask), which gives
the mixed cache's outputs but frees no memory. Under KV-cached decoding (``generate``) this module makes
the saving real: :func:`compact_layers` replaces each layer of a fresh transformers ``Cache`` (a
``DynamicCache``, as ``generate`` builds, or one the caller passes) that has streaming KV heads with a
:class:`CompactLayer`:

- the FULL KV heads of the layer go to the layer the cache had (``DynamicLayer``, or
  ``DynamicSlidingWindowLayer`` on a sliding-window layer such as Gemma 3's local layers), so their
  keys, values and the model's attention mask (``get_mask_sizes``) are exactly as without the policy;
- the STREAMING KV heads keep their own compact tensors ``[batch, n_streaming, T_c, d_head]`` plus each
  slot's absolute position and real-token index (padding skipped, as the masked rule counts). After
  every attention call the layer evicts what no later query can see: a key survives iff it is one of
  the first ``sink`` real tokens or lies within ``recent`` real tokens of the newest query (and, on a
  sliding-window layer, inside the window of the next query). So after a prefill of P tokens a
  streaming head holds ``sink + recent`` tokens, not P.

The mixed attention function (in :mod:`headmine.apply.kv`) sees a :class:`CompactLayer` for the module's
layer and runs the model's own kernel twice: the full heads' queries against the full heads' keys with
the model's mask; the streaming heads' queries against the compact keys with the model's mask gathered
at the kept positions AND the streaming rule. Outputs equal the masked version (the same keys get the
same weights; only the set the softmax sums over is smaller: equal to float rounding, tested).

Not supported (refused or left to the masked path): caches that already hold tokens when the block
starts (they are left as they are: masked, not compacted), beam-search reordering and cropping
(``reorder_cache``/``crop`` raise). :func:`cache_bytes` MEASURES what a cache holds (sum of the bytes
of its key/value tensors, and separately the compact layers' position bookkeeping).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from headmine.core.errors import InputError


class CompactLayer(CacheLayerMixin):
    """One layer of a compact mixed cache: ``inner`` (the cache's own layer) holds the full KV heads,
    compact tensors hold the streaming KV heads (see the module docstring)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, inner: CacheLayerMixin, full_kv: torch.Tensor, *, sink: int, recent: int,
                 box: dict[str, Any]) -> None:
        super().__init__()
        self.inner = inner
        self.full_kv_idx = torch.nonzero(full_kv, as_tuple=True)[0]
        self.stream_kv_idx = torch.nonzero(~full_kv, as_tuple=True)[0]
        self.sink, self.recent, self.box = sink, recent, box
        self.is_sliding = bool(getattr(inner, "is_sliding", False))
        self.window: int | None = int(inner.sliding_window) if self.is_sliding else None  # type: ignore[attr-defined]
        self.seen = 0
        self.sk: torch.Tensor | None = None  # [b, n_stream, T_c, d]
        self.sv: torch.Tensor | None = None
        self.s_abs: torch.Tensor | None = None  # [b, T_c] absolute position of each slot
        self.s_real: torch.Tensor | None = None  # [b, T_c] real-token index, -1 = padding / empty slot
        self.q_abs = torch.zeros(0, dtype=torch.long)
        self.q_real = torch.zeros(0, 0, dtype=torch.long)
        self.kv_offset = 0
        self.n_real: torch.Tensor | None = None  # [b] real tokens seen (when calls carry no 2-D mask)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens (full heads in ``inner``, streaming heads compactly) and return the full
        heads' keys and values (what the model's mask describes); the streaming part is read by the
        mixed attention function through :meth:`attend_stream`."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, _, tq, _ = key_states.shape
        dev = key_states.device
        self.kv_offset = self.inner.get_mask_sizes(tq)[1] if self.is_sliding else 0
        mask2d = self.box.get("mask")
        if mask2d is not None and mask2d.shape[1] >= self.seen + tq:
            m = mask2d[:, : self.seen + tq].to(dev).bool()
            real_new = (m.long().cumsum(-1) - 1)[:, -tq:]
            valid_new = m[:, -tq:]
        else:
            start = self.n_real if self.n_real is not None else torch.zeros(b, dtype=torch.long, device=dev)
            real_new = start[:, None] + torch.arange(tq, device=dev)[None, :]
            valid_new = torch.ones(b, tq, dtype=torch.bool, device=dev)
        self.n_real = real_new[:, -1] + 1
        self.q_abs = self.seen + torch.arange(tq, device=dev)
        self.q_real = real_new
        new_abs = self.q_abs[None, :].expand(b, tq)
        new_real = torch.where(valid_new, real_new, torch.full_like(real_new, -1))
        ks, vs = key_states[:, self.stream_kv_idx], value_states[:, self.stream_kv_idx]
        if self.sk is None:
            self.sk, self.sv, self.s_abs, self.s_real = ks, vs, new_abs.clone(), new_real
        else:
            assert self.sv is not None and self.s_abs is not None and self.s_real is not None
            self.sk = torch.cat([self.sk, ks], dim=-2)
            self.sv = torch.cat([self.sv, vs], dim=-2)
            self.s_abs = torch.cat([self.s_abs, new_abs], dim=-1)
            self.s_real = torch.cat([self.s_real, new_real], dim=-1)
        self.seen += tq
        full_k, full_v = key_states[:, self.full_kv_idx], value_states[:, self.full_kv_idx]
        return self.inner.update(full_k, full_v, *args, **kwargs)

    def stream_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Bool [b, 1, tq, T_c]: the model's mask gathered at the kept positions AND the streaming rule."""
        assert self.s_abs is not None and self.s_real is not None
        b, tc = self.s_abs.shape
        tq = int(self.q_abs.numel())
        if attention_mask is None:
            allowed = self.s_abs[:, None, :] <= self.q_abs[None, :, None]
        else:
            m = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
            m = m[:, 0].expand(b, tq, m.shape[-1])
            width = m.shape[-1]
            col = self.s_abs - self.kv_offset
            inside = (col >= 0) & (col < width)
            allowed = m.gather(-1, col.clamp(0, width - 1)[:, None, :].expand(b, tq, tc)) & inside[:, None, :]
        r = self.s_real[:, None, :]
        keep = (r >= 0) & ((r < self.sink) | (r > self.q_real[:, :, None] - self.recent))
        return (allowed & keep)[:, None]

    def evict(self) -> None:
        """Drop every streaming slot no later query can see (see the module docstring)."""
        assert self.s_abs is not None and self.s_real is not None and self.sk is not None and self.sv is not None
        last_real = self.q_real[:, -1:]
        keep = (self.s_real >= 0) & ((self.s_real < self.sink) | (self.s_real > last_real - self.recent))
        if self.window is not None:
            keep &= self.s_abs > int(self.q_abs[-1]) + 1 - self.window
        if bool(keep.all()):
            return
        tc = keep.shape[1]
        n_keep = int(keep.sum(1).max())
        order = torch.sort((~keep).long() * tc + torch.arange(tc, device=keep.device)[None, :], dim=1).indices[:, :n_keep]
        kept = keep.gather(1, order)
        self.s_abs = self.s_abs.gather(1, order)
        self.s_real = torch.where(kept, self.s_real.gather(1, order), torch.full_like(order, -1))
        idx = order[:, None, :, None].expand(-1, self.sk.shape[1], -1, self.sk.shape[-1])
        self.sk = self.sk.gather(2, idx)
        self.sv = self.sv.gather(2, idx)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.is_sliding:
            return self.inner.get_mask_sizes(query_length)
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return self.inner.get_max_length()

    def reset(self) -> None:
        self.inner.reset()
        self.sk = self.sv = self.s_abs = self.s_real = None
        self.seen, self.n_real, self.is_initialized = 0, None, False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise InputError("the compact mixed KV cache does not support beam search", "use greedy or sampling")

    def crop(self, tokens_to_remove: int) -> None:
        raise InputError("the compact mixed KV cache cannot be cropped (evicted tokens are gone)",
                         "do not use assisted decoding with it")

    def stored_bytes(self) -> tuple[int, int]:
        """(key/value bytes, position bookkeeping bytes) held by this layer."""
        kv = _tensor_bytes(self.inner.keys) + _tensor_bytes(self.inner.values)
        kv += _tensor_bytes(self.sk) + _tensor_bytes(self.sv)
        return kv, _tensor_bytes(self.s_abs) + _tensor_bytes(self.s_real)


def layer_windows(lm: Any) -> list[int | None]:
    """Each layer's own sliding window (None = global attention), from the model config."""
    cfg = lm.model.config
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    n = lm.geometry.n_layers
    if not types or window is None:
        return [None] * n
    return [int(window) if t == "sliding_attention" else None for t in types]


def kv_memory(lm: Any, policy: Any, n_tokens: int) -> dict[str, float]:
    """KV bytes kept at ``n_tokens`` tokens under ``policy`` and under a full cache (tokens x d_head x 2 x
    bytes per value, summed over layers and KV heads; a layer's own sliding window caps both). ``policy``
    is a :class:`headmine.apply.kv.KVPolicy` (``full``, ``sink``, ``recent``)."""
    g = lm.geometry
    nbytes = next(lm.model.parameters()).element_size()
    kept = full = 0
    for layer, w in enumerate(layer_windows(lm)):
        cap = n_tokens if w is None else min(n_tokens, w)
        for kv in range(g.n_kv_heads):
            full += cap
            kept += cap if bool(policy.full[layer, kv]) else min(cap, policy.sink + policy.recent)
    unit = g.d_head * 2 * nbytes
    return {"kv_bytes": kept * unit, "kv_bytes_full": full * unit, "kv_kept_share": kept / full if full else 1.0}


def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def compact_layers(cache: Any, full: torch.Tensor, *, sink: int, recent: int, box: dict[str, Any]) -> bool:
    """Swap a FRESH cache's layers that have streaming KV heads for :class:`CompactLayer` (``full`` bool
    [n_layers, n_kv_heads]); layers with every head full stay as they are. Returns whether the cache is
    compact now (False for a cache that is not a layered transformers Cache or already holds tokens)."""
    if not isinstance(cache, Cache) or not hasattr(cache, "layers"):
        return False
    if any(isinstance(layer, CompactLayer) for layer in cache.layers):
        return True
    if cache.get_seq_length() > 0:
        return False
    n_layers = full.shape[0]
    if getattr(cache, "layer_class_to_replicate", None) is not None:
        while len(cache.layers) < n_layers:
            cache.layers.append(cache.layer_class_to_replicate())
        cache.layer_class_to_replicate = None
    if len(cache.layers) != n_layers or not all(isinstance(layer, DynamicLayer) for layer in cache.layers):
        return False  # static, quantized or hybrid caches: the masked path still gives the right outputs
    for i in range(n_layers):
        if not bool(full[i].all()):
            cache.layers[i] = CompactLayer(cache.layers[i], full[i].bool().cpu(), sink=sink, recent=recent, box=box)
    return True


def cache_bytes(cache: Any) -> dict[str, int]:
    """MEASURED bytes a transformers cache holds: ``kv_bytes`` (every key/value tensor of every layer)
    and ``meta_bytes`` (the compact layers' per-slot positions)."""
    kv = meta = 0
    for layer in getattr(cache, "layers", []):
        if isinstance(layer, CompactLayer):
            a, b = layer.stored_bytes()
            kv, meta = kv + a, meta + b
        else:
            kv += _tensor_bytes(getattr(layer, "keys", None)) + _tensor_bytes(getattr(layer, "values", None))
    return {"kv_bytes": kv, "meta_bytes": meta}
