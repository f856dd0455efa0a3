"""Exact edge patching: circuits' faithfulness and completeness, and the check of scores against it.

``EdgePatcher.metric(patch)`` runs the clean prompts with every edge (u -> v) where ``patch[u, v]``
is set reading u's corrupted write instead (the EAP-IG code's ``evaluate_graph``: v's input gets
``sum_u (a_u(corrupted) - a_u(this run))`` over its patched edges; later writes are recomputed, so
patching an edge changes everything downstream of its receiver only through that receiver).
Identities: nothing patched = the clean run, every edge patched = the corrupted run.

Curves (held-out prompts): for a circuit C of N edges (top |score|, then pruned),
``faithfulness = (F(C) - F(corrupted)) / (F(clean) - F(corrupted))`` with every edge outside C patched,
and ``completeness = 1 - (F(M \\ C) - F(corrupted)) / (F(clean) - F(corrupted))`` with only C's edges
patched (1: removing the circuit removes the whole clean-corrupted difference). F = mean metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from headmine.causal.edge_attribution.forward import EdgeForward, PatchReader
from headmine.causal.edge_attribution.graph import EdgeGraph, prune, top_edges
from headmine.causal.edge_attribution.scores import graph_of, writes_of
from headmine.causal.metrics import AnswerMetric
from headmine.models.loading import LoadedModel


class EdgePatcher:
    """Clean prompts with their corrupted writes cached, batch by batch, for many patched runs."""

    def __init__(self, lm: LoadedModel, clean_ids: torch.Tensor, clean_mask: torch.Tensor, corrupted_ids: torch.Tensor,
                 corrupted_mask: torch.Tensor, metric: AnswerMetric, *, batch_size: int = 8) -> None:
        self.lm, self.graph, self.metric = lm, graph_of(lm), metric
        n = clean_ids.shape[0]
        self.batches = []
        for start in range(0, n, batch_size):
            rows = slice(start, min(n, start + batch_size))
            corrupted, _ = writes_of(lm, self.graph, corrupted_ids[rows], corrupted_mask[rows])
            self.batches.append((clean_ids[rows], clean_mask[rows], corrupted, metric.select(rows)))

    def metric_of(self, patch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Metric per prompt [B] with the edges of ``patch`` [U, V] (bool or weights) patched."""
        p = torch.as_tensor(np.asarray(patch, dtype=np.float64)) if isinstance(patch, np.ndarray) else patch.double()
        out = []
        for ids, mask, corrupted, m in self.batches:
            fwd = EdgeForward(self.lm, self.graph, PatchReader(p, corrupted))
            with torch.no_grad():
                out.append(m(fwd.run(ids, mask)).cpu())
        return torch.cat(out)

    def clean(self) -> float:
        return float(self.metric_of(np.zeros(self.graph.allowed.shape, dtype=bool)).mean())

    def corrupted(self) -> float:
        return float(self.metric_of(self.graph.allowed).mean())


@dataclass(frozen=True)
class CurvePoint:
    """One circuit size: edges asked, edges kept after pruning, and the metrics (means over prompts)."""

    n: int
    kept: int
    circuit: float  # F with every edge outside the circuit patched
    without: float  # F with only the circuit's edges patched
    faithfulness: float
    completeness: float


def circuit(scores: np.ndarray, graph: EdgeGraph, n: int) -> np.ndarray:
    """bool [U, V]: the top-``n`` edges by |score|, pruned of dangling edges."""
    return prune(top_edges(scores, graph, n), graph)


def curves(patcher: EdgePatcher, scores: np.ndarray, sizes: list[int]) -> tuple[float, float, list[CurvePoint]]:
    """(F(clean), F(corrupted), one point per circuit size) on the patcher's prompts."""
    graph = patcher.graph
    f_clean, f_corr = patcher.clean(), patcher.corrupted()
    span = f_clean - f_corr
    points = []
    for n in sizes:
        c = circuit(scores, graph, n)
        inside = float(patcher.metric_of(graph.allowed & ~c).mean())
        without = float(patcher.metric_of(c).mean())
        faith = (inside - f_corr) / span if span else float("nan")
        comp = 1.0 - (without - f_corr) / span if span else float("nan")
        points.append(CurvePoint(n=n, kept=int(c.sum()), circuit=inside, without=without, faithfulness=faith,
                                 completeness=comp))
    return f_clean, f_corr, points


@dataclass(frozen=True)
class ExactCheck:
    """Scores of sampled edges against their exact single-edge patching effect (mean metric change)."""

    senders: list[int]
    receivers: list[int]
    top: list[bool]  # True for the top-|score| sample, False for the random one
    estimate: list[float]
    exact: list[float]

    def pearson(self, part: bool | None = None) -> float:
        """Correlation of scores with exact effects over the sample (``part``: only its top (True) or
        random (False) edges); NaN when fewer than 3 edges or a constant side."""
        keep = np.array([part is None or t == part for t in self.top], dtype=bool)
        a, b = np.asarray(self.estimate)[keep], np.asarray(self.exact)[keep]
        if a.size < 3 or a.std() == 0 or b.std() == 0:
            return float("nan")
        return float(np.corrcoef(a, b)[0, 1])

    def sign_agreement(self, floor: float = 0.0) -> float:
        """Share of sampled edges with |exact| > ``floor`` whose score has the exact effect's sign."""
        a, b = np.asarray(self.estimate), np.asarray(self.exact)
        keep = np.abs(b) > floor
        return float((np.sign(a[keep]) == np.sign(b[keep])).mean()) if keep.any() else float("nan")


def exact_check(patcher: EdgePatcher, scores: np.ndarray, *, n_top: int = 10, n_random: int = 10,
                seed: int = 0) -> ExactCheck:
    """Patch each of the ``n_top`` highest-|score| edges and ``n_random`` other random edges alone."""
    graph = patcher.graph
    flat = np.where(graph.allowed, np.abs(scores), -np.inf).ravel()
    order = np.argsort(-flat, kind="stable")
    top = [int(i) for i in order[:n_top]]
    rest = np.setdiff1d(np.flatnonzero(graph.allowed.ravel()), top)
    rng = np.random.default_rng(seed)
    rand = [int(i) for i in rng.choice(rest, size=min(n_random, rest.size), replace=False)]
    base = patcher.metric_of(np.zeros(graph.allowed.shape, dtype=bool))
    senders, receivers, est, exact = [], [], [], []
    for idx in top + rand:
        u, v = divmod(idx, graph.n_receivers)
        patch = np.zeros(graph.allowed.shape, dtype=bool)
        patch[u, v] = True
        senders.append(u)
        receivers.append(v)
        est.append(float(scores[u, v]))
        exact.append(float((patcher.metric_of(patch) - base).mean()))
    return ExactCheck(senders=senders, receivers=receivers, top=[True] * len(top) + [False] * len(rand),
                      estimate=est, exact=exact)
