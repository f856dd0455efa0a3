"""Head identifiers and site names: one name, one tensor."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from headmine.core.errors import InputError


@dataclass(frozen=True, order=True)
class HeadId:
    """A query head, 0-indexed: written ``L{layer}H{head}`` in text."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadId:
        """Parse ``L3H5`` (also ``3.5`` or ``3:5``)."""
        m = re.fullmatch(r"\s*[Ll](\d+)[Hh](\d+)\s*|\s*(\d+)[.:](\d+)\s*", text)
        if not m:
            raise InputError(f"cannot read head {text!r}", "write heads as L<layer>H<head>, e.g. L3H5")
        a, b, c, d = m.groups()
        return cls(int(a if a is not None else c), int(b if b is not None else d))

    @classmethod
    def parse_list(cls, text: str) -> list[HeadId]:
        """Parse a comma-separated list, ``"L1H2,L1H3"`` -> ``[HeadId(1, 2), HeadId(1, 3)]``; empty parts
        are skipped, so ``""`` gives ``[]``."""
        return [cls.parse(part) for part in text.split(",") if part.strip()]


class Site(str, Enum):
    """Per-head quantities a capture can record.

    pattern: post-softmax attention [batch, head, q_pos, k_pos];
    q, k, v: projections per head [batch, pos, head|kv_head, d_head] (before RoPE);
    z: per-head input of the attention output projection [batch, pos, head, d_head];
    result: z_h @ W_O[h] [batch, pos, head, d_model];
    resid: residual stream before each layer and after the last [batch, pos, d_model];
    attn_out: attention block output (incl. projection bias) [batch, pos, d_model];
    mlp_out: MLP output [batch, pos, d_model].
    """

    PATTERN = "pattern"
    Q = "q"
    K = "k"
    V = "v"
    Z = "z"
    RESULT = "result"
    RESID = "resid"
    ATTN_OUT = "attn_out"
    MLP_OUT = "mlp_out"
