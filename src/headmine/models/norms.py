"""Norms as data: what a model's LayerNorm / RMSNorm computes, owned by its adapter.

Consumers (circuit weights, DLA, factual decoding) never read a norm module's attributes or guess
its class: they ask the adapter for a :class:`NormSpec` (kind, effective gain, bias, eps) and use
its exact re-implementation or its linearisation. The adapter declares the family's conventions
(RMS vs LayerNorm, Gemma's ``1 + weight`` gain, the attribute that holds eps).

Linearisation (direct logit attribution, decoded directions): the norm's scale, ``sqrt(mean(c^2) +
eps)`` with ``c`` the (centred, for LayerNorm) reference residual, is frozen at a reference
residual; what remains is linear in its input, so per-component contributions sum exactly to
``norm(x_ref) - bias``. The frozen map is *not* the norm's Jacobian: the Jacobian also moves the
scale. With ``n = c / scale`` and ``d`` the width, ``J v = lin(v) - weight * n * (n . centre(v)) /
(d * scale)``; the two agree on directions orthogonal to the (centred) reference residual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn

NormKind = Literal["rms", "layer"]


def _centre(x: torch.Tensor, centred: bool) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True) if centred else x


@dataclass(frozen=True)
class LinearisedNorm:
    """A norm with its scale frozen at reference rows: ``lin(c) = centre(c) / scale * weight``.

    ``scale`` [*rows, 1] holds one scale per reference row. ``lin`` takes ``c`` [*rows, ..., D]: the
    leading axes match the reference rows, any extra middle axes (heads, components) broadcast.
    ``lin(x_ref) + bias`` equals the norm's output at ``x_ref``; ``lin`` itself has no bias, so it is
    linear and per-component contributions add up.
    """

    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    centred: bool

    def __call__(self, c: torch.Tensor) -> torch.Tensor:
        c = _centre(c.float(), self.centred)
        extra = c.dim() - self.scale.dim()
        s = self.scale.view(*self.scale.shape[:-1], *([1] * extra), 1).to(c.device)
        return c / s * self.weight.to(c.device)


@dataclass(frozen=True)
class NormSpec:
    """One LayerNorm or RMSNorm as data. ``weight`` is the effective gain (Gemma's ``1 + w`` already
    applied; ones when the module has no gain), ``bias`` is None for RMSNorm and bias-free norms.
    Tensors are float32, detached, on the module's device."""

    kind: NormKind
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float

    @classmethod
    def of(cls, module: nn.Module, kind: NormKind, *, eps_attr: str, gain_offset: float = 0.0) -> NormSpec:
        """Read a norm module with the family's declared conventions (called by adapters only)."""
        w = getattr(module, "weight", None)
        b = getattr(module, "bias", None)
        if w is None:  # no gain (e.g. LayerNorm(elementwise_affine=False))
            shape = cast(tuple[int, ...], module.normalized_shape)  # a LayerNorm-like module's declared attribute
            weight = torch.ones(int(shape[-1])) + gain_offset
        else:
            weight = w.detach().float() + gain_offset
        bias = b.detach().float() if b is not None and kind == "layer" else None
        return cls(kind=kind, weight=weight, bias=bias, eps=float(getattr(module, eps_attr)))

    @property
    def centred(self) -> bool:
        return self.kind == "layer"

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """What the norm divides by, [..., 1]: ``sqrt(mean(c^2) + eps)`` with ``c`` centred for LayerNorm."""
        c = _centre(x.float(), self.centred)
        return c.pow(2).mean(-1, keepdim=True).add(self.eps).sqrt()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The norm applied to ``x`` [..., D] in float32 (equals the module's output in float32)."""
        x32 = x.float()
        out = _centre(x32, self.centred) / self.scale(x32) * self.weight.to(x.device)
        return out if self.bias is None else out + self.bias.to(x.device)

    def linearised(self, x_ref: torch.Tensor) -> LinearisedNorm:
        """The norm with its scale frozen at reference residuals ``x_ref`` [*rows, D] (module docstring)."""
        return LinearisedNorm(scale=self.scale(x_ref), weight=self.weight, bias=self.bias, centred=self.centred)

    def direction(self, v: torch.Tensor) -> torch.Tensor:
        """``centre(v) * weight``: the linearised norm before division by a scale (float32). Divide by
        :meth:`scale` of a reference residual for the linearised output at that residual."""
        return _centre(v.float(), self.centred) * self.weight.to(v.device)
