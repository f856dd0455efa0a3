"""One forward pass of an HF decoder with its residual stream split into edges, through hooks.

Every sender's write is recorded (``writes`` [B, T, U, d_model], float32, detached) and every
receiver reads ``residual + delta_v`` instead of the residual, where ``delta_v`` comes from a
``Reader``:

- ``GradReader``: one zero leaf [B, T, V, d_model] that requires grad. Its gradient after
  ``backward`` is dMetric/d(input of v) for every receiver v at once (the input of v is the sum of
  upstream writes, so this gradient is shared by all edges into v).
- ``PatchReader``: ``delta_v = sum_u P[u, v] (a_u(corrupted) - a_u(this run))`` over the senders u
  that v reads; ``P[u, v] = 1`` patches the edge (v reads u's corrupted write), a fraction
  interpolates, 0 keeps it. ``P = 0`` is the clean run; ``P = 1`` on every edge is the corrupted run.

How receivers are split without copying weights: q, k and v are recomputed per head from
``attn_norm(residual + delta)`` with the adapter's ``W_Q`` [H, d, d_head] (q, per query head) and
``W_K`` / ``W_V`` [K, d, d_head] (per KV head: grouped and multi-query attention stay grouped), and
returned as the projection's output, so q/k norms, RoPE and the kernel run unchanged. The MLP's input
is shifted in front of its pre-norm (``adapter.mlp_norm``), the logits' in front of the final norm.
A head's write is ``z_h W_O[h]``; where the family post-norms attention's output (Gemma 2/3),
each head's write is scaled by that norm's gain / RMS of the whole output in this run, so the heads'
writes add up to the block's write exactly (the post-norm's scale is the run's own: a head's
"corrupted write" is its share of the corrupted run's normed output).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.edge_attribution.graph import EdgeGraph
from headmine.core.errors import UnsupportedModelError
from headmine.core.ids import Site
from headmine.models.loading import LoadedModel
from headmine.models.norms import NormSpec


class Reader(ABC):
    """What receivers ``rs`` (reading senders ``0 .. prefix - 1``) add to their input: [B, T, n, d] or None."""

    @abstractmethod
    def read(self, rs: slice, prefix: int, writes: torch.Tensor) -> torch.Tensor | None: ...


class GradReader(Reader):
    """Zero deltas that require grad, one leaf per group of receivers (one leaf for all receivers would
    make every slice's backward allocate and add a full [B, T, V, d] tensor); ``grads()`` after
    ``backward`` is dMetric/d(receiver input) [B, T, V, d]."""

    def __init__(self, batch: int, seq: int, graph: EdgeGraph, d_model: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.shape = (batch, seq, graph.n_receivers, d_model)
        self.device, self.dtype = device, dtype
        self.leaves: dict[tuple[int, int], torch.Tensor] = {}  # (first, end) receiver -> its leaf

    def read(self, rs: slice, prefix: int, writes: torch.Tensor) -> torch.Tensor:
        b, t, _, d = self.shape
        leaf = torch.zeros(b, t, rs.stop - rs.start, d, device=self.device, dtype=self.dtype, requires_grad=True)
        self.leaves[(rs.start, rs.stop)] = leaf
        return leaf

    def grads(self) -> torch.Tensor:
        out = torch.zeros(self.shape, device=self.device, dtype=self.dtype)
        for (first, end), leaf in self.leaves.items():
            if leaf.grad is not None:  # None: nothing downstream of this receiver reaches the metric
                out[:, :, first:end] = leaf.grad
        return out


class PatchReader(Reader):
    """Edges patched to the corrupted writes ``corrupted`` [B, T, U, d] with weights ``patch`` [U, V]."""

    def __init__(self, patch: torch.Tensor, corrupted: torch.Tensor) -> None:
        self.patch = patch.to(corrupted.dtype) if corrupted.is_floating_point() else patch.float()
        self.corrupted = corrupted
        self._cumulative: torch.Tensor | None = None  # corrupted writes summed over senders 0..u

    def read(self, rs: slice, prefix: int, writes: torch.Tensor) -> torch.Tensor | None:
        weights = self.patch[:prefix, rs].to(writes.device, writes.dtype)
        if weights.requires_grad:
            diff = self.corrupted[:, :, :prefix].to(writes.device) - writes[:, :, :prefix]
            return torch.einsum("btud,uv->btvd", diff, weights)
        if not bool(weights.any()):
            return None  # nothing patched here: the receiver reads the residual as is
        # only the senders that matter: the patched ones, or (mostly patched) all minus the kept ones
        rows = weights.any(1)
        if int(rows.sum()) <= prefix // 2:
            idx = rows.nonzero().squeeze(1)
            diff = self.corrupted[:, :, idx].to(writes.device) - writes[:, :, idx]
            return torch.einsum("btud,uv->btvd", diff, weights[idx])
        if self._cumulative is None:
            self._cumulative = self.corrupted.cumsum(2)
        everything = self._cumulative[:, :, prefix - 1].to(writes.device) - writes[:, :, :prefix].sum(2)
        kept = 1 - weights
        idx = kept.any(1).nonzero().squeeze(1)
        diff = self.corrupted[:, :, idx].to(writes.device) - writes[:, :, idx]
        return everything[:, :, None] - torch.einsum("btud,uv->btvd", diff, kept[idx])


def check_supported(lm: LoadedModel) -> None:
    """UnsupportedModelError unless the family is a pre-norm decoder with separate q/k/v projections and
    a declared MLP pre-norm (the residual must be a sum of component writes)."""
    a = lm.adapter
    problems = []
    if not a.is_causal or a.attn_norm_name is None:
        problems.append("it is not a pre-norm decoder")
    if a.qkv_names is None or a.mlp_name is None or a.mlp_norm_name is None or a.final_norm_path is None:
        problems.append("its adapter declares no separate q/k/v projections, MLP pre-norm or final norm")
    else:
        points = a.qkv_hook_points(0)
        if len({id(points[s][0]) for s in (Site.Q, Site.K, Site.V)}) != 3:
            problems.append("its q/k/v projection is fused")
    if problems:
        raise UnsupportedModelError(
            f"edge attribution cannot split {lm.name} ({a.config.model_type}) into edges: {'; '.join(problems)}",
            "use a Llama-, Mistral-, Qwen- or Gemma-family model, or head-level attribution (`headmine attribute`)",
        )


def work_dtype(lm: LoadedModel) -> torch.dtype:
    """Writes, deltas and scores are float32 (float64 for a float64 model): reductions never run in bf16."""
    return torch.promote_types(lm.dtype, torch.float32)


class EdgeForward:
    """Hooks for one split forward on ``lm``; ``run`` returns the logits and fills ``self.writes``."""

    def __init__(self, lm: LoadedModel, graph: EdgeGraph, reader: Reader) -> None:
        check_supported(lm)
        self.lm, self.graph, self.reader = lm, graph, reader
        self.dtype = work_dtype(lm)
        self.writes = torch.empty(0)
        self._resid: torch.Tensor | None = None

    # ---- hooks -------------------------------------------------------------------------------
    def _embed_hook(self, embeddings: torch.Tensor | None) -> Callable[..., Any]:
        def fn(module: nn.Module, args: Any, kwargs: Any, output: torch.Tensor) -> torch.Tensor:
            out = output if embeddings is None else embeddings.to(output.device, output.dtype)
            self.writes[:, :, 0] = out.detach().to(self.dtype)
            return out
        return fn

    def _stash(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._resid = args[0] if args else kwargs["hidden_states"]

    def _qkv_hook(self, layer: int, norm: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None,
                  rs: slice) -> Callable[..., Any]:
        prefix = self.graph.prefix(rs.start)

        def fn(module: nn.Module, args: Any, kwargs: Any, output: torch.Tensor) -> torch.Tensor:
            delta = self.reader.read(rs, prefix, self.writes)
            if delta is None:
                return output
            assert self._resid is not None  # the attention norm's pre-hook ran first
            x = self._resid[:, :, None, :] + delta.to(self._resid.device, self._resid.dtype)  # [B, T, n, d]: one residual copy per receiver
            normed = norm.forward(x)  # the module's own math, without its hooks
            out = torch.einsum("btnd,nde->btne", normed, weight.to(normed.dtype))
            if bias is not None:
                out = out + bias.view(weight.shape[0], -1).to(out.dtype)
            return out.flatten(-2).to(output.dtype)
        return fn

    def _heads_hook(self, layer: int, post: NormSpec | None) -> Callable[..., Any]:
        g = self.lm.geometry
        w_o = self.lm.adapter.W_O(layer)  # [H, d_head, d], on the layer's device
        first = self.graph.head_sender(layer, 0)

        def fn(module: nn.Module, args: Any, kwargs: Any, output: torch.Tensor) -> None:
            z = (args[0] if args else kwargs["input"]).detach()
            r = torch.einsum("bthe,hed->bthd", z.unflatten(-1, (g.n_heads, g.d_head)).to(self.dtype), w_o.to(self.dtype))
            if post is not None:
                factor = post.weight.to(r.device, self.dtype) / post.scale(output.detach().to(self.dtype)).to(self.dtype)
                r = r * factor[:, :, None, :]
            self.writes[:, :, first:first + g.n_heads] = r.to(self.writes.device)
        return fn

    def _shift_hook(self, rs: slice) -> Callable[..., Any]:
        prefix = self.graph.prefix(rs.start)

        def fn(module: nn.Module, args: Any, kwargs: Any) -> Any:
            x = args[0] if args else kwargs["hidden_states"]
            delta = self.reader.read(rs, prefix, self.writes)
            if delta is None:
                return None
            new = x + delta[:, :, 0].to(x.device, x.dtype)
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        return fn

    def _write_hook(self, u: int) -> Callable[..., Any]:
        def fn(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            self.writes[:, :, u] = out.detach().to(self.writes.device, self.dtype)
        return fn

    def specs(self, embeddings: torch.Tensor | None = None) -> list[HookSpec]:
        a, gr = self.lm.adapter, self.graph
        specs = [HookSpec(a.embedding(), "forward", self._embed_hook(embeddings))]
        for layer in range(gr.n_layers):
            norm = a.attn_norm(layer)
            mlp_norm, mlp = a.mlp_norm(layer), a.mlp(layer)
            assert norm is not None and mlp_norm is not None and mlp is not None  # check_supported
            specs.append(HookSpec(norm, "pre", self._stash))
            points = a.qkv_hook_points(layer)
            for site, weight, rs in ((Site.Q, a.W_Q(layer), gr.q_receivers(layer)),
                                     (Site.K, a.W_K(layer), gr.k_receivers(layer)),
                                     (Site.V, a.W_V(layer), gr.v_receivers(layer))):
                module = points[site][0]
                bias = getattr(module, "bias", None)
                specs.append(HookSpec(module, "forward", self._qkv_hook(layer, norm, weight, bias, rs)))
            specs.append(HookSpec(a.out_proj(layer), "forward", self._heads_hook(layer, a.attn_post_norm_spec(layer))))
            m = gr.mlp_receiver(layer)
            specs.append(HookSpec(mlp_norm, "pre", self._shift_hook(slice(m, m + 1))))
            specs.append(HookSpec(a.mlp_post_norm(layer) or mlp, "forward", self._write_hook(gr.mlp_sender(layer))))
        final = a.final_norm()
        assert final is not None
        lg = gr.logits_receiver
        specs.append(HookSpec(final, "pre", self._shift_hook(slice(lg, lg + 1))))
        return specs

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
            embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab] of one split forward (gradients tracked when the caller enables them)."""
        lm = self.lm
        b, t = input_ids.shape
        self.writes = torch.zeros(b, t, self.graph.n_senders, lm.geometry.d_model, device=lm.device, dtype=self.dtype)
        with hooks(self.specs(embeddings)):
            out = lm.model(input_ids=input_ids.to(lm.device), attention_mask=attention_mask.to(lm.device), use_cache=False)
        self._resid = None
        return out.logits
