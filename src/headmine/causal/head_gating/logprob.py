"""Target log-probabilities under gate sets: one forward pass for K gate sets, logits only where a
target is predicted."""

from __future__ import annotations

import inspect

import torch

from headmine.causal.engine import intervening
from headmine.causal.head_gating.data import GatingData
from headmine.causal.interventions import Gate
from headmine.models.loading import LoadedModel


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _target_logits(lm: LoadedModel, ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [rows, P, vocab], column [T] mapping a position to its column or -1): logits only at the
    positions that predict a target (``logits_to_keep``), when the model supports it."""
    t = ids.shape[1]
    keep = loss_mask[:, 1:].any(0).nonzero().flatten()
    if _accepts_logits_to_keep(lm.model) and keep.numel() < t:
        logits = lm.model(input_ids=ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    else:
        keep = torch.arange(t, device=ids.device)
        logits = lm.model(input_ids=ids, attention_mask=attention_mask).logits
    column = torch.full((t,), -1, dtype=torch.long, device=ids.device)
    column[keep] = torch.arange(keep.numel(), device=ids.device)
    return logits, column


def _seq_logprob(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor,
                 column: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row mean log-prob of the masked target tokens: [rows]. Only target positions are normalised.
    ``logits[:, column[t]]`` predicts token t+1 (``column`` None: the identity)."""
    dev = logits.device  # the last layer's device when the layers are spread over several
    ids, loss_mask = ids.to(dev), loss_mask.to(dev)
    column = None if column is None else column.to(dev)
    mask = loss_mask[:, 1:]
    rows, pos = mask.nonzero(as_tuple=True)
    cols = pos if column is None else column[pos]
    sel = logits[rows, cols].float().log_softmax(-1)  # [n_targets, vocab]
    lp = sel.gather(-1, ids[rows, pos + 1][:, None]).squeeze(-1)
    total = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    return total / mask.sum(1).clamp_min(1).to(lp.dtype)


def gated_logprob(lm: LoadedModel, ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                  gates: torch.Tensor | None) -> torch.Tensor:
    """Per-row mean target log-prob under each gate set: [K, rows] (``gates`` [K, L, H] or [L, H] or None).

    One forward pass: the rows are repeated K times and row k*B+b gets gate set k. Keeps the graph
    when called under grad (gradients flow to ``gates``). Logits are computed only at positions that
    predict a target.
    """
    dev = lm.device
    ids, attention_mask, loss_mask = ids.to(dev), attention_mask.to(dev), loss_mask.to(dev)
    lm.check_length(ids.shape[1])
    b = ids.shape[0]
    if gates is None:
        logits, column = _target_logits(lm, ids, attention_mask, loss_mask)
        return _seq_logprob(logits, ids, loss_mask, column)[None]
    if gates.dim() == 2:
        gates = gates[None]
    k = gates.shape[0]
    factors = gates[0] if k == 1 else gates.repeat_interleave(b, dim=0)
    if k > 1:
        ids, attention_mask, loss_mask = ids.repeat(k, 1), attention_mask.repeat(k, 1), loss_mask.repeat(k, 1)
    with intervening(lm, [Gate(factors=factors.to(dev))]):
        logits, column = _target_logits(lm, ids, attention_mask, loss_mask)
    return _seq_logprob(logits, ids, loss_mask, column).view(k, b)


@torch.no_grad()
def mean_logprob(lm: LoadedModel, data: GatingData, gates: torch.Tensor | None = None, *,
                 micro_batch: int = 32) -> torch.Tensor:
    """Mean over rows of the per-row mean target log-prob, per gate set: [K] (K=1 when gates is None)."""
    k = 1 if gates is None else (1 if gates.dim() == 2 else gates.shape[0])
    per_pass = max(1, micro_batch // k)
    total = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(data), per_pass):
        ids, att, lmask = data.rows(range(start, min(start + per_pass, len(data))))
        total += gated_logprob(lm, ids, att, lmask, gates).double().sum(1).cpu()
    return (total / len(data)).float()
