"""Weight tensors for OV/QK circuit scores, passed to detectors instead of the model.

``CircuitWeights`` holds per-query-head weights stacked over layers, the unembedding with the
final norm's gain folded in, and the gain of each layer's attention-input norm. Norms are applied
as RMS (Llama family) or LayerNorm (centre, then scale) according to ``norm_kind``. RoPE and
q/k norms are not applied: QK scores computed from these weights are position-free.

:func:`circuit_weights` builds them from the model adapter alone (its weight slices and
:class:`~headmine.models.norms.NormSpec` s), so every family the adapters describe gets the right
gains (Gemma's ``1 + w`` included) without this module knowing any module names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headmine.models.base import ModelAdapter
from headmine.models.loading import LoadedModel
from headmine.models.norms import NormSpec


@dataclass(frozen=True, kw_only=True)
class CircuitWeights:
    """W_Q/W_K/W_V: [layer, head, d_model, d_head] (K and V repeated per query head);
    W_O: [layer, head, d_head, d_model], with the gain of a norm on the attention output folded in
    (Gemma 2/3); W_U: [d_model, vocab] with the final norm gain folded in;
    attn_norm_gain: [layer, d_model] (ones when the norm has no gain); norm_kind: "rms" or "layer"."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    W_U: torch.Tensor
    attn_norm_gain: torch.Tensor
    norm_kind: str = "rms"

    @classmethod
    def from_adapter(cls, adapter: ModelAdapter) -> CircuitWeights:
        """Stack the adapter's weights (float32, detached). The attention-norm gain is ones where a
        layer has no norm in front of attention (post-norm models); ``norm_kind`` is the final norm's."""
        g = adapter.geometry
        layers = range(g.n_layers)
        with torch.no_grad():
            w_q = torch.stack([adapter.W_Q(layer).detach().float() for layer in layers])
            w_k = torch.stack([adapter.per_query_head(adapter.W_K(layer)).detach().float() for layer in layers])
            w_v = torch.stack([adapter.per_query_head(adapter.W_V(layer)).detach().float() for layer in layers])
            w_o = torch.stack([_post_normed(adapter.W_O(layer).detach().float(), adapter.attn_post_norm_spec(layer))
                               for layer in layers])
            w_u = adapter.W_U().detach().float()
            final = adapter.final_norm_spec()
            if final is not None:
                w_u = final.weight.to(w_u.device)[:, None] * w_u
            gains = []
            for layer in layers:
                spec = adapter.attn_norm_spec(layer)
                gains.append(torch.ones(g.d_model, device=w_o.device) if spec is None else spec.weight)
        return cls(W_Q=w_q, W_K=w_k, W_V=w_v, W_O=w_o, W_U=w_u, attn_norm_gain=torch.stack(gains),
                   norm_kind=final.kind if final is not None else "rms")

    @property
    def n_layers(self) -> int:
        return int(self.W_O.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.W_O.shape[1])

    def normalize(self, x: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the model's norm shape (no epsilon subtleties): centre for LayerNorm, then unit RMS."""
        x = x.to(torch.float32)
        if self.norm_kind == "layer":
            x = x - x.mean(-1, keepdim=True)
        x = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return x if gain is None else x * gain.to(x.dtype)

    def ov(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Each head's output for residual rows ``x`` [n, d_model] read through its OV circuit:
        [head, n, d_model] (input normed with the layer's attention-norm gain)."""
        xn = self.normalize(x, self.attn_norm_gain[layer])
        v = torch.einsum("nm,hmd->hnd", xn, self.W_V[layer].to(xn.dtype))
        return torch.einsum("hnd,hdm->hnm", v, self.W_O[layer].to(xn.dtype))

    def logits(self, out: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Direct-path logits of head outputs ``out`` [..., d_model] for ``token_ids`` only,
        through the final norm (linearised: each output normed on its own)."""
        return self.normalize(out) @ self.W_U[:, token_ids].to(torch.float32)


def _post_normed(w_o: torch.Tensor, spec: NormSpec | None) -> torch.Tensor:
    """W_O [head, d_head, d_model] followed by the attention output's own norm where the family has
    one (Gemma 2/3 "sandwich" norms), linearised: each head's output centred (LayerNorm) and scaled by
    the norm's gain; the per-row 1/rms is left out, as for the other norms here."""
    if spec is None:
        return w_o
    if spec.kind == "layer":
        w_o = w_o - w_o.mean(-1, keepdim=True)
    return w_o * spec.weight.detach().float().to(w_o.device)


def circuit_weights(lm: LoadedModel) -> CircuitWeights:
    """The weights OV/QK detectors read, from ``lm``'s adapter (no model object goes to a detector)."""
    return CircuitWeights.from_adapter(lm.adapter)
