"""EAP and EAP-IG edge scores (Syed et al. 2023; Hanna et al. 2024, arXiv 2403.17806).

``score(u -> v) = mean_prompts sum_{pos, d} (a_u(corrupted) - a_u(clean)) . g_v`` with ``g_v`` the
gradient of the metric with respect to the input of receiver v:

- EAP (``steps=0``): ``g_v`` at the clean input; one corrupted forward and one clean
  forward + backward per batch (the clean writes come from the same pass).
- EAP-IG (``steps=m``): ``g_v`` averaged over m forward + backward passes in which the embedding
  output is ``e_corr + (k/m)(e_clean - e_corr)``, k = 0..m-1 (the paper's code: the corrupted end
  in, the clean end out; m = 5 in its experiments); the activation differences stay the true
  corrupted-minus-clean ones (two no-grad forwards).

The score approximates the change of the metric when v reads u's corrupted write (edge patching),
so for a metric the model raises on clean prompts the important edges are negative. Cost per batch:
EAP one forward + one forward/backward, EAP-IG two forwards + m forward/backwards, plus the score
product ``[U, B*T*d] @ [B*T*d, V]``; memory: the writes [B, T, U, d] (clean and corrupted) and the
receiver gradients [B, T, V, d] of one batch (``batch_size`` bounds them), never [edges x positions].
"""

from __future__ import annotations

import torch

from headmine.causal.edge_attribution.forward import EdgeForward, GradReader, PatchReader, work_dtype
from headmine.causal.edge_attribution.graph import EdgeGraph
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError
from headmine.models.loading import LoadedModel


def graph_of(lm: LoadedModel) -> EdgeGraph:
    g = lm.geometry
    return EdgeGraph(g.n_layers, g.n_heads, g.n_kv_heads)


def writes_of(lm: LoadedModel, graph: EdgeGraph, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(writes [B, T, U, d], logits) of a plain (unpatched) run, without gradients."""
    fwd = EdgeForward(lm, graph, PatchReader(torch.zeros(graph.n_senders, graph.n_receivers), torch.zeros(0)))
    with torch.no_grad():
        logits = fwd.run(ids, mask)
    return fwd.writes, logits


def receiver_grads(lm: LoadedModel, graph: EdgeGraph, ids: torch.Tensor, mask: torch.Tensor, metric: AnswerMetric,
                   embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward: (dSum(metric)/d(receiver input) [B, T, V, d], writes [B, T, U, d], metric [B])."""
    b, t = ids.shape
    reader = GradReader(b, t, graph, lm.geometry.d_model, lm.device, work_dtype(lm))
    fwd = EdgeForward(lm, graph, reader)
    with torch.enable_grad():
        values = metric(fwd.run(ids, mask, embeddings=embeddings))
        values.sum().backward()
    return reader.grads(), fwd.writes, values.detach()


def _check(clean_ids: torch.Tensor, clean_mask: torch.Tensor, corrupted_ids: torch.Tensor,
           corrupted_mask: torch.Tensor, metric: AnswerMetric, steps: int, batch_size: int) -> None:
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}", "0 = EAP, m > 0 = EAP-IG with m steps (the paper uses 5)")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}", "use a few prompts per pass, e.g. 8")
    if clean_ids.shape != corrupted_ids.shape or clean_mask.shape != clean_ids.shape:
        raise InputError(f"clean prompts {tuple(clean_ids.shape)} and corrupted prompts {tuple(corrupted_ids.shape)} "
                         "differ in shape", "edge patching pairs each clean prompt with a corrupted one of the same length")
    if not torch.equal(clean_mask.bool(), corrupted_mask.bool()):
        raise InputError("a clean prompt and its corrupted prompt differ in length",
                         "make both prompts tokenise to the same length (swap single-token words)")
    if metric.n != clean_ids.shape[0]:
        raise InputError(f"the metric has {metric.n} prompts but {clean_ids.shape[0]} were given")


def edge_scores(lm: LoadedModel, clean_ids: torch.Tensor, clean_mask: torch.Tensor, corrupted_ids: torch.Tensor,
                corrupted_mask: torch.Tensor, metric: AnswerMetric, *, steps: int = 5, batch_size: int = 8) -> torch.Tensor:
    """EAP (``steps=0``) or EAP-IG (``steps=m``) scores [U, V] (float32, CPU; 0 where no edge exists),
    averaged over the prompts."""
    _check(clean_ids, clean_mask, corrupted_ids, corrupted_mask, metric, steps, batch_size)
    graph = graph_of(lm)
    total = torch.zeros(graph.n_senders, graph.n_receivers, dtype=work_dtype(lm))
    n = clean_ids.shape[0]
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        ids, mask, m = clean_ids[rows], clean_mask[rows], metric.select(rows)
        corrupted, _ = writes_of(lm, graph, corrupted_ids[rows], corrupted_mask[rows])
        if steps == 0:
            grads, clean, _ = receiver_grads(lm, graph, ids, mask, m)
        else:
            clean, _ = writes_of(lm, graph, ids, mask)
            e_clean, e_corr = clean[:, :, 0], corrupted[:, :, 0]
            grads = torch.zeros(0)
            for k in range(steps):
                point = e_corr + (k / steps) * (e_clean - e_corr)
                g_k, _, _ = receiver_grads(lm, graph, ids, mask, m, embeddings=point)
                grads = g_k if k == 0 else grads + g_k
            grads = grads / steps
        diff = (corrupted - clean).permute(2, 0, 1, 3).reshape(graph.n_senders, -1)
        total += (diff @ grads.permute(2, 0, 1, 3).reshape(graph.n_receivers, -1).T).cpu()
    allowed = torch.from_numpy(graph.allowed)
    return torch.where(allowed, total / n, torch.zeros((), dtype=total.dtype))
