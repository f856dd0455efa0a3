"""The edge graph of a pre-norm decoder: senders (what writes to the residual stream), receivers
(what reads it) and the edges allowed by layer order; circuit selection (top-N, then pruning).

Senders (index order = layer order): ``input`` (the embedding output), every query head's output
``L{l}H{h}`` (its slice of the output projection, times the post-norm's scale on Gemma 2/3) and
every MLP ``M{l}`` (its write to the residual stream). Receivers: per *query* head its q input
``L{l}H{h}.q``; per *KV head* its k and v inputs ``L{l}KV{j}.k`` / ``.v`` (grouped and multi-query
attention natively: one k and one v receiver per KV head, shared by its group of query heads, as the
model computes them; an edge into ``L{l}KV{j}.k`` changes the keys of every query head of group j),
every MLP input ``M{l}`` and ``logits`` (the final residual, before the final norm).

A receiver reads the sum of the writes of every sender before it in the block order: attention
of layer l reads ``input`` and layers < l; the MLP of layer l also reads layer l's heads; the
logits read everything. With the senders numbered in that order the readable senders of any
receiver are a prefix ``0 .. prefix(v) - 1``, which is how the scoring and patching code index them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from headmine.core.errors import InputError


@dataclass(frozen=True)
class EdgeGraph:
    """Node and receiver indexing for ``n_layers`` blocks of ``n_heads`` query heads and
    ``n_kv_heads`` KV heads. Pure indexing: no tensors, no model."""

    n_layers: int
    n_heads: int
    n_kv_heads: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1 or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise InputError(f"cannot build an edge graph for {self.n_layers} layers, {self.n_heads} heads, "
                             f"{self.n_kv_heads} KV heads", "the query heads must split evenly into KV groups")

    # ---- senders ------------------------------------------------------------------------------
    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def sender_name(self, u: int) -> str:
        if u == 0:
            return "input"
        layer, rest = divmod(u - 1, self.n_heads + 1)
        return f"M{layer}" if rest == self.n_heads else f"L{layer}H{rest}"

    # ---- receivers ----------------------------------------------------------------------------
    @property
    def per_layer(self) -> int:
        """Receivers per block: H q inputs, K k inputs, K v inputs, one MLP input."""
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer + 1

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * self.per_layer

    def q_receivers(self, layer: int) -> slice:
        base = layer * self.per_layer
        return slice(base, base + self.n_heads)

    def k_receivers(self, layer: int) -> slice:
        base = layer * self.per_layer + self.n_heads
        return slice(base, base + self.n_kv_heads)

    def v_receivers(self, layer: int) -> slice:
        base = layer * self.per_layer + self.n_heads + self.n_kv_heads
        return slice(base, base + self.n_kv_heads)

    def mlp_receiver(self, layer: int) -> int:
        return (layer + 1) * self.per_layer - 1

    def receiver_name(self, v: int) -> str:
        if v == self.logits_receiver:
            return "logits"
        layer, r = divmod(v, self.per_layer)
        h, k = self.n_heads, self.n_kv_heads
        if r < h:
            return f"L{layer}H{r}.q"
        if r < h + k:
            return f"L{layer}KV{r - h}.k"
        if r < h + 2 * k:
            return f"L{layer}KV{r - h - k}.v"
        return f"M{layer}"

    def prefix(self, v: int) -> int:
        """How many senders (0 .. prefix - 1) receiver ``v`` reads."""
        if v == self.logits_receiver:
            return self.n_senders
        layer, r = divmod(v, self.per_layer)
        start = 1 + layer * (self.n_heads + 1)
        return start + self.n_heads if r == self.per_layer - 1 else start

    @cached_property
    def prefixes(self) -> np.ndarray:
        """[V] ``prefix(v)`` for every receiver."""
        return np.array([self.prefix(v) for v in range(self.n_receivers)])

    @cached_property
    def allowed(self) -> np.ndarray:
        """bool [U, V]: True where the edge sender -> receiver exists."""
        return np.arange(self.n_senders)[:, None] < self.prefixes[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.prefixes.sum())

    def edge_name(self, u: int, v: int) -> str:
        return f"{self.sender_name(u)}->{self.receiver_name(v)}"

    # ---- which node a receiver feeds ------------------------------------------------------------
    @cached_property
    def receiver_nodes(self) -> list[list[int]]:
        """Per receiver, the sender nodes whose output it feeds: a q input its head, a k or v input every
        query head of its KV group, an MLP input its MLP, the logits none."""
        out: list[list[int]] = []
        g = self.n_heads // self.n_kv_heads
        for v in range(self.n_receivers):
            if v == self.logits_receiver:
                out.append([])
                continue
            layer, r = divmod(v, self.per_layer)
            h, k = self.n_heads, self.n_kv_heads
            if r < h:
                out.append([self.head_sender(layer, r)])
            elif r < h + 2 * k:
                j = (r - h) % k
                out.append([self.head_sender(layer, q) for q in range(j * g, (j + 1) * g)])
            else:
                out.append([self.mlp_sender(layer)])
        return out


def top_edges(scores: np.ndarray, graph: EdgeGraph, n: int) -> np.ndarray:
    """bool [U, V]: the ``n`` allowed edges with the largest |score| (ties broken by index)."""
    if n < 0:
        raise InputError(f"a circuit needs n >= 0 edges, got {n}", "ask for a positive number of edges")
    flat = np.where(graph.allowed, np.abs(np.nan_to_num(scores, nan=0.0)), -np.inf).ravel()
    keep = np.zeros(flat.shape, dtype=bool)
    order = np.argsort(-flat, kind="stable")[: min(n, graph.n_edges)]
    keep[order] = True
    return keep.reshape(scores.shape) & graph.allowed


def prune(edges: np.ndarray, graph: EdgeGraph) -> np.ndarray:
    """Remove dangling edges until none is left (as the EAP-IG code's ``prune``): an edge stays when its
    sender has an input in the circuit (``input`` always has) and the node its receiver feeds has an
    output in the circuit (the logits always have). Removing them does not change the circuit's metric:
    a sender with no incoming edge computes its corrupted value, and a receiver of an unused node
    changes nothing downstream."""
    edges = edges.copy()
    nodes = graph.receiver_nodes
    while True:
        has_out: np.ndarray = np.asarray(edges.any(axis=1))  # [U]
        has_in = np.zeros(graph.n_senders, dtype=bool)
        has_in[0] = True
        fed: np.ndarray = np.asarray(edges.any(axis=0))  # [V]
        for v in np.flatnonzero(fed):
            has_in[nodes[v]] = True
        alive = np.array([v == graph.logits_receiver or bool(np.any(has_out[nodes[v]])) for v in range(graph.n_receivers)])
        new = edges & has_in[:, None] & alive[None, :]
        if (new == edges).all():
            return new
        edges = new
