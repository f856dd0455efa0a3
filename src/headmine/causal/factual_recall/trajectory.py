"""Layer-wise answer trajectory (logit lens) and the share of prompts whose answer drops at the end.

Choices (stated, not taken from the paper, whose exact procedure is unverified, METHODS.md §2.5):
- Readout after layer ``l`` = the model's own final norm + unembedding (+ soft-cap) applied to the
  residual stream at the prediction position (:func:`headmine.causal.logit_lens.logit_lens`). Index 0 is the embedding
  output, index ``n_layers`` the model's final logits (exact, not an approximation).
- "Last-layer drop" for a prompt: ``p_final < p_after_layer(L-1)``, i.e. the last layer lowers the
  answer's probability. ``drop_share(k)`` generalises to "final below the maximum over the k layers
  before it". Both are reported with the mean log-probability change of the last layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from headmine.causal.factual_recall.common import as_list, check_fact_batch, sub_batches
from headmine.causal.logit_lens import logit_lens
from headmine.causal.metrics import AnswerMetric
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch


@dataclass(frozen=True)
class Trajectory:
    """Per prompt and readout point: answer probability, rank (0 = top-1) and log-probability.

    ``prob``/``rank``/``logprob`` are [B, n_layers + 1]; column ``i`` reads the residual stream
    before layer ``i`` (column ``n_layers`` = final logits). ``relation``/``shots`` label the rows.
    """

    prob: torch.Tensor
    rank: torch.Tensor
    logprob: torch.Tensor
    relation: list[str]
    shots: list[int] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return self.prob.shape[1] - 1

    def drop_mask(self, k: int = 1) -> torch.Tensor:
        """Bool [B]: the final probability is below the maximum over the ``k`` readouts before it."""
        before = self.prob[:, -1 - k : -1].max(dim=1).values
        return self.prob[:, -1] < before

    def drop_share(self, k: int = 1) -> float:
        return float(self.drop_mask(k).float().mean())

    def select(self, rows: torch.Tensor) -> Trajectory:
        idx = rows.nonzero().flatten().tolist() if rows.dtype == torch.bool else rows.tolist()
        return Trajectory(self.prob[idx], self.rank[idx], self.logprob[idx], [self.relation[i] for i in idx],
                          [self.shots[i] for i in idx] if self.shots else [])

    def summary(self) -> dict[str, Any]:
        """Headline numbers: drop shares, mean last-layer log-prob change, peak layer, final top-1."""
        lp = self.logprob
        return {
            "n": int(self.prob.shape[0]),
            "drop_share_last": self.drop_share(1),
            "drop_share_last3": self.drop_share(min(3, self.n_layers)),
            "mean_last_layer_dlogp": float((lp[:, -1] - lp[:, -2]).mean()),
            "mean_prob_penultimate": float(self.prob[:, -2].mean()),
            "mean_prob_final": float(self.prob[:, -1].mean()),
            "mean_peak_prob": float(self.prob.max(dim=1).values.mean()),
            "median_peak_layer": int(self.prob.argmax(dim=1).float().median()),
            "top1_penultimate": float((self.rank[:, -2] == 0).float().mean()),
            "top1_final": float((self.rank[:, -1] == 0).float().mean()),
        }

    def groups(self) -> dict[str, Trajectory]:
        """Sub-trajectories per ``relation/shots`` (e.g. ``country_capital/0``)."""
        keys = [f"{r}/{s}" for r, s in zip(self.relation, self.shots or [0] * len(self.relation), strict=True)]
        out: dict[str, Trajectory] = {}
        for key in sorted(set(keys)):
            mask = torch.tensor([k == key for k in keys])
            out[key] = self.select(mask)
        return out


def answer_trajectory(lm: LoadedModel, batch: TokenBatch, *, batch_size: int = 8) -> Trajectory:
    """Logit-lens probability and rank of each prompt's answer after every layer (one capture per sub-batch)."""
    check_fact_batch(batch)
    probs, ranks, lps = [], [], []
    for sub in sub_batches(batch, batch_size):
        metric = AnswerMetric(kind="answer_logprob", end_pos=sub.meta["end_pos"], target_id=sub.meta["target_id"])
        lens = logit_lens(lm, sub.input_ids, sub.attention_mask, metric)  # [L+1, b]
        probs.append(lens.prob.T)
        ranks.append(lens.rank.T)
        lps.append(lens.logprob.T)
    shots = as_list(batch.meta["shots"]) if "shots" in batch.meta else [0] * len(batch)
    return Trajectory(torch.cat(probs), torch.cat(ranks), torch.cat(lps), list(batch.meta["relation"]),
                      [int(s) for s in shots])
