"""Typed interventions at head sites: the per-head input ``z`` of the attention output projection.

Every intervention maps ``z`` [batch, pos, head, d_head] of one layer to a new ``z``. Head
selections are query heads (GQA/MQA included). ``positions`` is None (every position), a tuple of
positions shared by all rows, or a LongTensor [batch] with one position per row (e.g. END in IOI).
Replacements use ``torch.where`` so gradients flow where they should (Gate is differentiable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from headmine.core.errors import InputError
from headmine.core.ids import HeadId

Positions = None | tuple[int, ...] | torch.Tensor


def _heads_in(heads: Sequence[HeadId], layer: int, n_heads: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(n_heads, dtype=torch.bool, device=device)
    for h in heads:
        if h.layer == layer:
            mask[h.head] = True
    return mask


def _positions_in(positions: Positions, batch: int, seq: int, device: torch.device) -> torch.Tensor:
    """Bool mask [batch, seq]."""
    if positions is None:
        return torch.ones(batch, seq, dtype=torch.bool, device=device)
    mask = torch.zeros(batch, seq, dtype=torch.bool, device=device)
    if isinstance(positions, torch.Tensor):
        pos = positions.to(device).long().view(batch, -1)
        if (pos >= seq).any() or (pos < -seq).any():
            raise InputError(f"intervention position outside a sequence of {seq} tokens", "check per-row positions")
        mask.scatter_(1, pos % seq, True)
    else:
        for p in positions:
            if not -seq <= p < seq:
                raise InputError(f"intervention position {p} outside a sequence of {seq} tokens", "check positions")
            mask[:, p] = True
    return mask


@dataclass(frozen=True, kw_only=True)
class Intervention:
    """Base: replace or rescale ``z`` for ``heads`` at ``positions``."""

    heads: tuple[HeadId, ...] = ()
    positions: Positions = None

    def layers(self) -> set[int]:
        return {h.layer for h in self.heads}

    def site_mask(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Bool [batch, pos, head, 1]: where this intervention acts in ``z``."""
        b, t, n, _ = z.shape
        return (
            _positions_in(self.positions, b, t, z.device)[:, :, None, None]
            & _heads_in(self.heads, layer, n, z.device)[None, None, :, None]
        )

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Zero(Intervention):
    """Zero ablation: the head writes nothing (its W_O slice sees 0)."""

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return torch.where(self.site_mask(layer, z), torch.zeros((), dtype=z.dtype, device=z.device), z)


@dataclass(frozen=True, kw_only=True)
class Scale(Intervention):
    """Multiply the head's z by ``factor``."""

    factor: float = 0.0

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return torch.where(self.site_mask(layer, z), z * self.factor, z)


@dataclass(frozen=True, kw_only=True)
class Mean(Intervention):
    """Mean ablation: replace z by a reference mean, ``values[layer]`` of shape [head, d_head] or [pos, head, d_head]."""

    values: Mapping[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record, heads: Sequence[HeadId], *, per_position: bool = False, positions: Positions = None) -> Mean:
        """Means of z over a reference capture (padding excluded); the record must hold z for all heads."""
        mask = record.attention_mask.to(torch.float32)
        values = {}
        for layer in {h.layer for h in heads}:
            z = record.z[layer].to(torch.float32)  # [batch, pos, head, d_head]
            if record.heads[layer] != list(range(z.shape[2])):
                raise InputError("Mean.from_record needs z captured for every head of the layer", "capture z without a head filter")
            weights = mask[:, :, None, None]
            if per_position:
                values[layer] = (z * weights).sum(0) / weights.sum(0).clamp_min(1)
            else:
                values[layer] = (z * weights).sum((0, 1)) / weights.sum((0, 1)).clamp_min(1)
        return cls(heads=tuple(heads), positions=positions, values=values)

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        v = self.values[layer].to(z.dtype).to(z.device)
        if v.dim() == 3:
            v = v[: z.shape[1]]
        return torch.where(self.site_mask(layer, z), v.expand_as(z) if v.dim() == 3 else v[None, None], z)


@dataclass(frozen=True, kw_only=True)
class PatchFrom(Intervention):
    """Activation patching: take z from another run, ``source[layer]`` of shape [batch, pos, head, d_head]."""

    source: Mapping[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def resample(cls, record, heads: Sequence[HeadId], *, seed: int = 0, positions: Positions = None) -> PatchFrom:
        """Resample ablation: each row gets z from another row of ``record`` (a fixed random derangement)."""
        n = record.input_ids.shape[0]
        if n < 2:
            raise InputError("resample ablation needs a reference batch of at least 2 sequences", "add prompts")
        g = torch.Generator().manual_seed(seed)
        perm = (torch.arange(n) + torch.randint(1, n, (1,), generator=g)) % n  # a shift: no row keeps its own
        source = {layer: record.z[layer][perm] for layer in {h.layer for h in heads}}
        return cls(heads=tuple(heads), positions=positions, source=source)

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        src = self.source[layer].to(z.device, z.dtype)
        if src.shape[1] != z.shape[1] or src.shape[0] not in (1, z.shape[0]):
            raise InputError(
                f"patch source has shape {tuple(src.shape[:2])} (batch, pos) but the run has {tuple(z.shape[:2])}",
                "patch between runs with the same batch size and sequence length",
            )
        return torch.where(self.site_mask(layer, z), src.expand_as(z), z)


@dataclass(frozen=True, kw_only=True)
class Steer(Intervention):
    """Add ``alpha * vector`` to each selected head's z (vector [d_head], or [n_selected_heads, d_head] in heads order)."""

    vector: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    alpha: float = 1.0

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        vec = self.vector.to(z.device, z.dtype)
        add = torch.zeros(z.shape[2], z.shape[3], dtype=z.dtype, device=z.device)
        for i, h in enumerate(self.heads):
            if h.layer == layer:
                add[h.head] = vec if vec.dim() == 1 else vec[i]
        return torch.where(self.site_mask(layer, z), z + self.alpha * add, z)


@dataclass(frozen=True, kw_only=True)
class Gate(Intervention):
    """Per-head multiplicative gates: ``factors`` [layer, head], or [batch, layer, head] (one set per row).

    Differentiable: pass a tensor that requires grad (e.g. ``sigmoid(theta)``). All heads of all
    layers are gated; ``heads`` is ignored.
    """

    factors: torch.Tensor = field(default_factory=lambda: torch.ones(0))

    def layers(self) -> set[int]:
        return set(range(self.factors.shape[-2]))

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        f = self.factors[..., layer, :].to(z.device, z.dtype)  # the layer's own device (layers may be spread)
        if f.dim() == 1:
            return z * f[None, None, :, None]
        if f.shape[0] != z.shape[0]:
            raise InputError(f"Gate has {f.shape[0]} gate rows but the batch has {z.shape[0]}", "one gate set per row")
        return z * f[:, None, :, None]
