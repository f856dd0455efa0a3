"""The ``eap`` causal method: edge scores, circuit curves on held-out prompts, an exact-patching check
and the measured cost, as one atlas run of kind ``edge_attribution``.

Prompts are split in two, alternating (so both halves hold every template): the even ones are
scored and carry the exact check (scores estimate patching on the prompts they were computed on),
the odd ones evaluate the circuits (faithfulness and completeness against N).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.edge_attribution.evaluate import EdgePatcher, curves, exact_check
from headmine.causal.edge_attribution.forward import check_supported, work_dtype
from headmine.causal.edge_attribution.graph import EdgeGraph
from headmine.causal.edge_attribution.scores import edge_scores, graph_of
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError
from headmine.core.tables import scores_frame
from headmine.models.loading import LoadedModel

DEFAULT_EDGES = "10,20,50,100,200,500,1000,2000"
TOP_EDGES_KEPT = 200  # top edges listed by name in the run's summary


def parse_sizes(text: str) -> list[int]:
    """``"50,100,200"`` -> [50, 100, 200] (sorted, unique); InputError on anything else."""
    try:
        sizes = sorted({int(x) for x in str(text).replace(" ", "").split(",") if x})
    except ValueError:
        raise InputError(f"edges={text!r} is not a list of integers", "write e.g. --edges 50,100,200") from None
    if not sizes or sizes[0] < 1:
        raise InputError(f"edges={text!r}: give at least one circuit size, each >= 1", "write e.g. --edges 50,100,200")
    return sizes


@dataclass(frozen=True, kw_only=True)
class EdgeAttributionConfig(MethodConfig):
    """``steps``: 0 = EAP, m = EAP-IG with m steps (the paper's experiments: 5); ``edges``: circuit sizes
    for the curves; ``batch_size``: prompts per pass (bounds memory); ``check_top`` / ``check_random``:
    edges checked against exact patching. Half the ``n`` prompts are scored, half held out."""

    n: int = 16
    steps: int = 5
    edges: str = DEFAULT_EDGES
    batch_size: int = 8
    check_top: int = 10
    check_random: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n < 2:
            raise InputError(f"eap needs n >= 2 prompts (half scored, half held out), got {self.n}", "use e.g. --n 16")
        if self.steps < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}", "0 = EAP, m > 0 = EAP-IG (the paper uses 5)")
        if self.batch_size < 1 or self.check_top < 0 or self.check_random < 0:
            raise InputError("batch_size must be >= 1 and the check counts >= 0",
                             f"got batch_size={self.batch_size}, check_top={self.check_top}, check_random={self.check_random}")
        parse_sizes(self.edges)

    def sizes(self) -> list[int]:
        return parse_sizes(self.edges)


def _grad_input(module: Any, args: Any, kwargs: Any, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the embedding output as a leaf that requires grad (the backward then runs through
    every layer, as a real forward + backward does)."""
    return output.detach().requires_grad_(True)


def forward_backward_seconds(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, metric: AnswerMetric,
                             batch_size: int) -> float:
    """Wall seconds of one plain forward + backward (metric gradient to the embedding output) over the
    prompts, in the same batches: the unit the method's cost is stated in."""
    start = time.perf_counter()
    for s in range(0, ids.shape[0], batch_size):
        rows = slice(s, s + batch_size)
        with torch.enable_grad(), hooks([HookSpec(lm.adapter.embedding(), "forward", _grad_input)]):
            out = lm.model(input_ids=ids[rows].to(lm.device), attention_mask=mask[rows].to(lm.device), use_cache=False)
            metric.select(rows)(out.logits).sum().backward()
    return time.perf_counter() - start


@dataclass(frozen=True, kw_only=True)
class EdgeAttributionResult:
    """Edge scores [U, V] (mean over the scored prompts) and the run's summary (JSON-plain)."""

    method: str
    metric: str
    graph: EdgeGraph
    scores: torch.Tensor
    baseline: torch.Tensor
    summary: dict[str, Any]

    def node_out(self) -> np.ndarray:
        """[U]: sum of |score| over each sender's out-edges."""
        return np.abs(self.scores.numpy()).sum(axis=1)

    def head_matrix(self) -> np.ndarray:
        g, out = self.graph, self.node_out()
        return np.array([[out[g.head_sender(layer, h)] for h in range(g.n_heads)] for layer in range(g.n_layers)])

    def frame(self) -> pd.DataFrame:
        g, out, n = self.graph, self.node_out(), int(self.baseline.shape[0])
        metric = f"out_edges_abs_{self.metric}"
        rows: list[dict[str, Any]] = [{"component": "embed", "layer": 0, "head": -1, "method": self.method, "metric": metric,
                                       "value": out[0], "n": n}]
        for layer in range(g.n_layers):
            rows += [{"component": "head", "layer": layer, "head": h, "method": self.method, "metric": metric,
                      "value": out[g.head_sender(layer, h)], "n": n} for h in range(g.n_heads)]
            rows.append({"component": "mlp", "layer": layer, "head": -1, "method": self.method, "metric": metric,
                         "value": out[g.mlp_sender(layer)], "n": n})
        return scores_frame(rows)

    def artifacts(self) -> dict[str, Any]:
        return {"edge_scores": self.scores.numpy().astype(np.float32), "baseline": self.baseline.numpy(),
                "eap_summary": self.summary}


def top_edge_list(scores: np.ndarray, graph: EdgeGraph, k: int) -> list[dict[str, Any]]:
    flat = np.where(graph.allowed, np.abs(scores), -np.inf).ravel()
    out = []
    for i in np.argsort(-flat, kind="stable")[:k]:
        u, v = divmod(int(i), graph.n_receivers)
        out.append({"edge": graph.edge_name(u, v), "sender": u, "receiver": v, "score": float(scores[u, v])})
    return out


def run_edge_attribution(lm: LoadedModel, config: EdgeAttributionConfig, inputs: CausalInputs) -> EdgeAttributionResult:
    """Score every edge on the even prompts, check a sample exactly, draw the curves on the odd ones."""
    check_supported(lm)
    corrupted_ids, corrupted_mask = inputs.corrupted("eap")
    n = inputs.clean_ids.shape[0]
    if n < 2:
        raise InputError(f"eap needs at least 2 prompts (half scored, half held out), got {n}", "use e.g. --n 16")
    scored, held = torch.arange(0, n, 2), torch.arange(1, n, 2)
    cid, cmask, rid, rmask = inputs.clean_ids, inputs.clean_mask, corrupted_ids, corrupted_mask
    m_scored, m_held = inputs.metric.select(scored), inputs.metric.select(held)
    graph = graph_of(lm)
    bs = config.batch_size
    t0 = time.perf_counter()
    scores_t = edge_scores(lm, cid[scored], cmask[scored], rid[scored], rmask[scored], m_scored,
                           steps=config.steps, batch_size=bs)
    scoring_s = time.perf_counter() - t0
    unit_s = forward_backward_seconds(lm, cid[scored], cmask[scored], m_scored, bs)
    scores = scores_t.numpy()
    t1 = time.perf_counter()
    check = exact_check(EdgePatcher(lm, cid[scored], cmask[scored], rid[scored], rmask[scored], m_scored, batch_size=bs),
                        scores, n_top=config.check_top, n_random=config.check_random, seed=config.seed)
    check_s = time.perf_counter() - t1
    held_patcher = EdgePatcher(lm, cid[held], cmask[held], rid[held], rmask[held], m_held, batch_size=bs)
    t2 = time.perf_counter()
    f_clean, f_corr, points = curves(held_patcher, scores, config.sizes())
    curves_s = time.perf_counter() - t2
    baseline = m_scored(lm.forward(cid[scored], cmask[scored])).detach().cpu()
    b, t = min(bs, len(scored)), cid.shape[1]
    itemsize = torch.finfo(work_dtype(lm)).bits // 8
    buffers = b * t * lm.geometry.d_model * itemsize * (2 * graph.n_senders + 3 * graph.n_receivers)
    summary: dict[str, Any] = {
        "method": "eap" if config.steps == 0 else "eap-ig", "steps": config.steps, "metric": inputs.metric.kind,
        "graph": {"senders": graph.n_senders, "receivers": graph.n_receivers, "edges": graph.n_edges,
                  "n_layers": graph.n_layers, "n_heads": graph.n_heads, "n_kv_heads": graph.n_kv_heads},
        "prompts": {"scored": len(scored), "held_out": len(held), "tokens": int(t)},
        "top_edges": top_edge_list(scores, graph, TOP_EDGES_KEPT),
        "held_out": {"clean": f_clean, "corrupted": f_corr},
        "curves": [p.__dict__ for p in points],
        "check": {"edges": [graph.edge_name(u, v) for u, v in zip(check.senders, check.receivers, strict=True)],
                  "top": check.top, "estimate": check.estimate, "exact": check.exact,
                  "pearson": check.pearson(), "sign_agreement": check.sign_agreement(),
                  "pearson_top": check.pearson(True), "pearson_random": check.pearson(False), "seconds": check_s},
        "cost": {"scoring_s": scoring_s, "forward_backward_s": unit_s,
                 "multiple": scoring_s / unit_s if unit_s > 0 else None, "curves_s": curves_s,
                 "batch_size": bs, "buffer_mb": buffers / 2**20},
    }
    method = "eap" if config.steps == 0 else f"eap_ig{config.steps}"
    return EdgeAttributionResult(method=method, metric=inputs.metric.kind, graph=graph, scores=scores_t.float(),
                                 baseline=baseline, summary=summary)


class EdgeAttribution(CausalMethod[EdgeAttributionConfig]):
    """Edge attribution patching (EAP) and EAP-IG over every edge of the residual graph."""

    name = "eap"
    run_kind = "edge_attribution"
    config_cls = EdgeAttributionConfig

    def needs_corrupted(self, config: EdgeAttributionConfig) -> bool:
        return True

    def run(self, lm: LoadedModel, config: EdgeAttributionConfig, inputs: CausalInputs) -> EdgeAttributionResult:
        return run_edge_attribution(lm, config, inputs)


register_method(EdgeAttribution())
