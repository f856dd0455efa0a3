"""Answer metrics for causal methods: one number per prompt, read at the prediction position.

``AnswerMetric`` holds, per prompt, the prediction position (``end_pos``), the answer id and
(for logit differences) the competing id. It evaluates full logits [R, T, V] or logits already
taken at the prediction position [R, V]. ``R`` may be a multiple of the prompt count B: rows are
then *variant-major* (row ``v * B + b`` is prompt ``b`` under variant ``v``), the layout every
batched sweep in ``headmine.causal`` uses.

Kinds: ``logit_diff`` (logit(target) - logit(wrong)), ``logit`` (target logit), ``answer_logprob``
(log-softmax of the target) and ``prob`` (softmax probability of the target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headmine.core.errors import TaskError
from headmine.core.tables import scores_frame

METRIC_KINDS = ("logit_diff", "logit", "answer_logprob", "prob")


@dataclass(frozen=True, kw_only=True)
class AnswerMetric:
    """Per-prompt metric at the prediction position.

    Attributes:
        kind: one of ``METRIC_KINDS``.
        end_pos: LongTensor [B], position whose logits predict the answer.
        target_id: LongTensor [B], the answer token.
        wrong_id: LongTensor [B], the competing token (needed for ``logit_diff``).
    """

    kind: str
    end_pos: torch.Tensor
    target_id: torch.Tensor
    wrong_id: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise TaskError(f"unknown metric {self.kind!r}", f"use one of {METRIC_KINDS}")
        if self.kind == "logit_diff" and self.wrong_id is None:
            raise TaskError("metric logit_diff needs a wrong answer for every prompt", "give wrong_target, or use answer_logprob")
        b = self.end_pos.shape[0]
        if self.target_id.shape[0] != b or (self.wrong_id is not None and self.wrong_id.shape[0] != b):
            raise TaskError("end_pos, target_id and wrong_id must have one entry per prompt")
        if b == 0:
            raise TaskError("the dataset is empty", "give at least one prompt")

    @property
    def n(self) -> int:
        return int(self.end_pos.shape[0])

    @classmethod
    def from_batch(cls, batch: Any, kind: str | None = None) -> AnswerMetric:
        """From a ``TokenBatch`` whose meta has ``end_pos``, ``target_id`` and (optionally) ``wrong_id``."""
        meta = batch.meta
        if "target_id" not in meta:
            targets = meta.get("target_ids")
            bad = next((i for i, t in enumerate(targets or []) if len(t) != 1), None)
            where = f"; prompt {bad} has a target of {len(targets[bad])} tokens" if bad is not None else ""
            raise TaskError(
                f"this method needs a single-token target for every prompt{where}",
                "use single-token answers (mind the leading space, e.g. ' Paris')",
            )
        wrong = meta.get("wrong_id")
        if kind is None:
            kind = "logit_diff" if wrong is not None else "answer_logprob"
        end = meta.get("end_pos", batch.attention_mask.sum(1) - 1)
        return cls(kind=kind, end_pos=end.long(), target_id=meta["target_id"].long(),
                   wrong_id=None if wrong is None else wrong.long())

    def with_kind(self, kind: str) -> AnswerMetric:
        return AnswerMetric(kind=kind, end_pos=self.end_pos, target_id=self.target_id, wrong_id=self.wrong_id)

    def select(self, rows: torch.Tensor | slice) -> AnswerMetric:
        """The metric of prompts ``rows`` only (an index tensor or a slice)."""
        return AnswerMetric(kind=self.kind, end_pos=self.end_pos[rows], target_id=self.target_id[rows],
                            wrong_id=None if self.wrong_id is None else self.wrong_id[rows])

    def end_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[R, T, V] -> [R, V] at each row's prediction position."""
        r = logits.shape[0]
        pos = self._tile(self.end_pos, r).to(logits.device)
        return logits[torch.arange(r, device=logits.device), pos]

    def _tile(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        if rows % self.n:
            raise TaskError(f"{rows} rows is not a multiple of the {self.n} prompts")
        return t.repeat(rows // self.n)

    def from_end_logits(self, end_logits: torch.Tensor) -> torch.Tensor:
        """[R, V] logits at the prediction position -> metric [R] (float32)."""
        x = end_logits.float()
        r = x.shape[0]
        ar = torch.arange(r, device=x.device)
        tgt = self._tile(self.target_id, r).to(x.device)
        if self.kind == "logit_diff":
            assert self.wrong_id is not None
            return x[ar, tgt] - x[ar, self._tile(self.wrong_id, r).to(x.device)]
        if self.kind == "logit":
            return x[ar, tgt]
        logp = torch.log_softmax(x, dim=-1)[ar, tgt]
        return logp if self.kind == "answer_logprob" else logp.exp()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Full logits [R, T, V] (or [R, V]) -> metric [R]."""
        return self.from_end_logits(self.end_logits(logits) if logits.dim() == 3 else logits)

    def direction(self, w_u: torch.Tensor) -> torch.Tensor:
        """Unembedding direction [B, d_model] whose dot product with the final normed residual is the
        metric's logit part (``logit_diff`` or ``logit`` only)."""
        if self.kind == "logit_diff":
            assert self.wrong_id is not None
            return (w_u[:, self.target_id] - w_u[:, self.wrong_id]).T
        if self.kind == "logit":
            return w_u[:, self.target_id].T
        raise TaskError(f"metric {self.kind!r} is not linear in the logits", "use logit_diff or logit for this method")


# --------------------------------------------------------------------------- per-head results
@dataclass(frozen=True, kw_only=True)
class HeadEffects:
    """What a per-head causal method measured.

    Attributes:
        method: e.g. ``ablation_zero``, ``patching_noising``, ``attribution``.
        metric: the metric kind (see ``METRIC_KINDS``).
        values: [L, H, B] metric per head and prompt under the intervention, or [L, H, T, B] per
            position; for estimates (attribution) the estimated *change* of the metric.
        baseline: [B] metric of the unintervened run the interventions are applied to.
        reference: [B] metric of the other run (corrupted for noising, clean for denoising), if any.
        is_delta: ``values`` already hold changes (attribution) rather than metric values.
    """

    method: str
    metric: str
    values: torch.Tensor
    baseline: torch.Tensor
    reference: torch.Tensor | None = None
    is_delta: bool = False

    @property
    def deltas(self) -> torch.Tensor:
        """Change of the metric per head (and position) and prompt: same shape as ``values``."""
        return self.values if self.is_delta else self.values - self.baseline

    @property
    def effects(self) -> torch.Tensor:
        """Mean change over prompts: [L, H] (or [L, H, T])."""
        return self.deltas.mean(-1)

    @property
    def stderr(self) -> torch.Tensor:
        d = self.deltas
        n = d.shape[-1]
        return d.std(-1) / n**0.5 if n > 1 else torch.full(d.shape[:-1], float("nan"))

    def top(self, k: int = 10, *, by_abs: bool = True) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest (absolute) mean effect: (layer, head, effect)."""
        e = self.effects
        if e.dim() == 3:
            e = e.abs().amax(-1) if by_abs else e.amax(-1)
        key = e.abs() if by_abs else e
        order = torch.argsort(key.flatten(), descending=True)[:k]
        n_heads = e.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(e.flatten()[i])) for i in order]

    def head_matrix(self) -> np.ndarray:
        """[L, H] mean change per head (per-position results: the largest |change| over positions)."""
        e = self.effects
        return (e.abs().amax(-1) if e.dim() == 3 else e).numpy()

    def artifacts(self) -> dict[str, np.ndarray]:
        """Per-prompt ``baseline``, ``reference`` (if any) and ``per_prompt`` values, stored with the run."""
        out = {"baseline": self.baseline.numpy()}
        if self.reference is not None:
            out["reference"] = self.reference.numpy()
        out["per_prompt"] = self.values.numpy()
        return out

    def frame(self) -> Any:
        """Tidy table: one row per head (and position), metric ``delta_<kind>``; plus ``frac_<kind>``
        (the change as a fraction of reference - baseline) when a reference run exists."""
        e, se, n = self.effects, self.stderr, int(self.deltas.shape[-1])
        total = None
        if self.reference is not None:
            total = float((self.reference - self.baseline).mean())
        rows = []
        shape = e.shape
        for layer in range(shape[0]):
            for head in range(shape[1]):
                positions = [None] if e.dim() == 2 else list(range(shape[2]))
                for p in positions:
                    val = float(e[layer, head] if p is None else e[layer, head, p])
                    err = float(se[layer, head] if p is None else se[layer, head, p])
                    suffix = "" if p is None else f"@pos{p}"
                    rows.append({"layer": layer, "head": head, "method": self.method,
                                 "metric": f"delta_{self.metric}{suffix}", "value": val, "n": n, "stderr": err})
                    if total is not None and abs(total) > 1e-9:
                        rows.append({"layer": layer, "head": head, "method": self.method,
                                     "metric": f"frac_{self.metric}{suffix}", "value": val / total, "n": n,
                                     "stderr": err / abs(total)})
        return scores_frame(rows)


def bootstrap_ci(values: torch.Tensor, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean of ``values`` [N] (paired differences)."""
    x = values.double().numpy()
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def next_token_loss(lm: Any, input_ids: torch.Tensor, *, batch_size: int = 4) -> float:
    """Mean next-token cross-entropy (nats) over ``input_ids`` [n_chunks, T] (every position of full rows).

    Runs under whatever hooks are active (an intervention, a mitigation, an applied artifact), so the
    same function measures the plain model and the edited one: a cost is the difference of two calls.
    """
    if input_ids.numel() == 0 or input_ids.shape[-1] < 2:
        raise TaskError("the corpus sample is empty", "give at least one chunk of two or more tokens of unrelated text")
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start:start + batch_size].to(lm.device)
        with torch.no_grad():
            logits = lm.forward(ids, torch.ones_like(ids)).float()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               ids[:, 1:].reshape(-1).to(logits.device), reduction="sum")
        total += float(ce)
        count += ids[:, 1:].numel()
    return total / count
