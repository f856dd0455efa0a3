"""Logit lens: the answer's probability and rank after every layer (final norm + unembedding
applied to the residual stream at the prediction position)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric
from headmine.core.ids import Site
from headmine.core.tables import scores_frame
from headmine.models.loading import LoadedModel


@dataclass(frozen=True, kw_only=True)
class LensResult:
    """Per depth and prompt, all [L + 1, B]: depth 0 is the embedding output (input of layer 0), depth
    i >= 1 the residual after layer i - 1 (depth L equals the model's own output).

    prob / logprob / rank (0 = top-1) / logit of the target; ``metric`` the AnswerMetric's value;
    ``top1`` the argmax token id.
    """

    prob: torch.Tensor
    logprob: torch.Tensor
    rank: torch.Tensor
    logit: torch.Tensor
    metric: torch.Tensor
    metric_kind: str
    top1: torch.Tensor

    def head_matrix(self) -> None:
        """The lens reads layers, not heads."""
        return None

    def artifacts(self) -> dict[str, np.ndarray]:
        return {}

    def frame(self) -> Any:
        """Tidy rows: component ``embed`` (depth 0) and ``layer`` l (after layer l); metrics prob,
        logprob, rank, and the task metric; value = mean over prompts."""
        n = int(self.prob.shape[1])
        rows = []
        for depth in range(self.prob.shape[0]):
            comp, layer = ("embed", 0) if depth == 0 else ("layer", depth - 1)
            for name, t in (("prob", self.prob), ("logprob", self.logprob), ("rank", self.rank.float()),
                            (self.metric_kind, self.metric)):
                v = t[depth].float()
                err = float(v.std() / n**0.5) if n > 1 else float("nan")
                rows.append({"component": comp, "layer": layer, "head": -1, "method": "logit_lens", "metric": name,
                             "value": float(v.mean()), "n": n, "stderr": err})
        return scores_frame(rows)


def lens_logits(loaded: LoadedModel, resid: torch.Tensor) -> torch.Tensor:
    """Final norm (if any), unembedding and soft-cap (if any) of residual vectors [..., D] -> logits [..., V]."""
    return loaded.adapter.readout(resid)


def logit_lens(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    metric: AnswerMetric,
) -> LensResult:
    """Decode the residual stream at ``metric.end_pos`` after every layer (one forward pass)."""
    g = loaded.geometry
    spec = CaptureSpec(sites=frozenset({Site.RESID}), query_positions=metric.end_pos, keep_logits=False)
    rec = run_capture(loaded, spec, input_ids, attention_mask)
    resid = torch.stack([rec.resid[i][:, 0] for i in range(g.n_layers + 1)])  # [L+1, B, D]
    with torch.no_grad():
        logits = lens_logits(loaded, resid[:, :, None])[:, :, 0].float()  # [L+1, B, V]
    tgt = metric.target_id.to(logits.device)
    logp = torch.log_softmax(logits, -1)
    idx = tgt.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    t_logit = logits.gather(-1, idx)[..., 0]
    rank = (logits > t_logit[..., None]).sum(-1)
    values = torch.stack([metric.from_end_logits(logits[d]) for d in range(logits.shape[0])])
    lp = logp.gather(-1, idx)[..., 0]
    return LensResult(prob=lp.exp().cpu(), logprob=lp.cpu(), rank=rank.cpu(), logit=t_logit.cpu(),
                      metric=values.cpu(), metric_kind=metric.kind, top1=logits.argmax(-1).cpu())


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, kw_only=True)
class LensConfig(MethodConfig):
    """The logit lens has no options of its own."""


class LogitLens(CausalMethod[LensConfig]):
    """The answer's probability and rank after every layer (one forward)."""

    name = "logit_lens"
    run_kind = "logit_lens"
    config_cls = LensConfig

    def run(self, lm: LoadedModel, config: LensConfig, inputs: CausalInputs) -> LensResult:
        return logit_lens(lm, inputs.clean_ids, inputs.clean_mask, inputs.metric)


register_method(LogitLens())
