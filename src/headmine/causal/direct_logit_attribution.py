"""Direct logit attribution per head and per MLP, with the final norm linearised (METHODS 3.13).

The final residual at the prediction position is a sum of components: the embedding, each head's
result ``z_h @ W_O[h]``, each attention output bias and each MLP output. With the final norm's
scale frozen from the *full* residual (and the mean removed for LayerNorm), the norm is linear, so
``DLA(c) = norm_lin(c) . u`` with ``u`` the metric's unembedding direction (W_U[:, target] -
W_U[:, wrong] for a logit difference). The components then sum to the model's metric exactly, up
to the norm's own bias, the unembedding bias and final-logit soft-capping (reported as ``rest``).
The norm is the adapter's :class:`~headmine.models.norms.NormSpec`; this module knows no family.
Blocks with post-norms (Gemma 2/3 "sandwich" norms) write ``post_norm(attn_out)``: each head's result
goes through that norm linearised at the block's whole output (scale frozen), the MLP's output through
its own post-norm; without this the heads' raw results (before a norm that rescales them by orders of
magnitude) were attributed and the difference landed in ``rest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import UnsupportedModelError
from headmine.core.ids import Site
from headmine.core.tables import scores_frame
from headmine.models.loading import LoadedModel
from headmine.models.norms import LinearisedNorm


def freeze_final_norm(loaded: LoadedModel, resid_final: torch.Tensor) -> LinearisedNorm | None:
    """The adapter's final norm linearised at ``resid_final`` [N, D] (None: the model has no final norm).

    Checked against the module's own output, so a wrongly declared adapter fails loudly here.
    """
    a = loaded.adapter
    spec, norm = a.final_norm_spec(), a.final_norm()
    if spec is None or norm is None:
        return None
    with torch.no_grad():
        actual = norm(resid_final[:, None])[:, 0].float()
    tol = (1e-3 + 4 * torch.finfo(resid_final.dtype).eps) * (1 + actual.abs().max().item())
    if not torch.allclose(spec(resid_final), actual, atol=tol, rtol=1e-3):
        raise UnsupportedModelError(
            f"the adapter's final norm ({spec.kind}) does not reproduce {type(norm).__name__} of {loaded.name}",
            "fix the family's adapter (norm_kind, norm_eps_attr, norm_gain_offset); tests/adapters checks it",
        )
    return spec.linearised(resid_final)


@dataclass(frozen=True, kw_only=True)
class DLAResult:
    """Per-prompt direct contributions to the metric (logit difference or target logit).

    heads [L, H, B]; mlp [L, B]; attn_bias [L, B]; embed [B]; rest [B] (final-norm bias, unembedding
    bias and anything not captured as a component); total [B] = the model's metric. The sum of all
    parts equals ``total`` up to float error.
    """

    metric: str
    heads: torch.Tensor
    mlp: torch.Tensor
    attn_bias: torch.Tensor
    embed: torch.Tensor
    rest: torch.Tensor
    total: torch.Tensor

    def component_sum(self) -> torch.Tensor:
        return self.heads.sum((0, 1)) + self.mlp.sum(0) + self.attn_bias.sum(0) + self.embed + self.rest

    def head_matrix(self) -> np.ndarray:
        """[L, H] mean direct contribution per head."""
        return self.heads.mean(-1).numpy()

    def artifacts(self) -> dict[str, np.ndarray]:
        return {}

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        e = self.heads.mean(-1)
        order = torch.argsort(e.abs().flatten(), descending=True)[:k]
        return [(int(i) // e.shape[1], int(i) % e.shape[1], float(e.flatten()[i])) for i in order]

    def frame(self) -> Any:
        n = int(self.total.shape[0])

        def stats(v: torch.Tensor) -> tuple[float, float]:
            return float(v.mean()), (float(v.std() / n**0.5) if n > 1 else float("nan"))

        rows: list[dict[str, Any]] = []
        m = f"dla_{self.metric}"
        for layer in range(self.heads.shape[0]):
            for head in range(self.heads.shape[1]):
                val, err = stats(self.heads[layer, head])
                rows.append({"component": "head", "layer": layer, "head": head, "method": "dla", "metric": m, "value": val, "n": n, "stderr": err})
            val, err = stats(self.mlp[layer])
            rows.append({"component": "mlp", "layer": layer, "head": -1, "method": "dla", "metric": m, "value": val, "n": n, "stderr": err})
            val, err = stats(self.attn_bias[layer])
            rows.append({"component": "layer", "layer": layer, "head": -1, "method": "dla", "metric": f"{m}_attn_bias", "value": val, "n": n, "stderr": err})
        val, err = stats(self.embed)
        rows.append({"component": "embed", "layer": 0, "head": -1, "method": "dla", "metric": m, "value": val, "n": n, "stderr": err})
        last = self.heads.shape[0]
        for name, v in (("rest", self.rest), ("total", self.total)):
            val, err = stats(v)
            rows.append({"component": "layer", "layer": last, "head": -1, "method": "dla", "metric": f"{m}_{name}", "value": val, "n": n, "stderr": err})
        return scores_frame(rows)


def direct_logit_attribution(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    metric: AnswerMetric,
) -> DLAResult:
    """Direct logit attribution of every head, MLP, attention bias and the embedding (one forward).

    ``metric`` kinds ``prob`` and ``answer_logprob`` are attributed through the target's logit.
    """
    g, a = loaded.geometry, loaded.adapter
    if metric.kind not in ("logit_diff", "logit"):
        metric = metric.with_kind("logit")
    has_mlp = a.mlp_name is not None
    sites = {Site.Z, Site.ATTN_OUT, Site.RESID} | ({Site.MLP_OUT} if has_mlp else set())
    spec = CaptureSpec(sites=frozenset(sites), query_positions=metric.end_pos)
    rec = run_capture(loaded, spec, input_ids, attention_mask)
    b = metric.n
    resid_final = rec.resid[g.n_layers][:, 0]
    frozen = freeze_final_norm(loaded, resid_final)
    u = metric.direction(a.W_U().float())  # [B, D]
    out = u.device  # every contribution is read out where the unembedding lives (the last device)

    def dla(c: torch.Tensor) -> torch.Tensor:  # c [B, ..., D] -> [B, ...]
        c = c.to(out)
        lin = c.float() if frozen is None else frozen(c)
        return (lin * u.view(b, *([1] * (c.dim() - 2)), -1)).sum(-1)

    heads = torch.empty(g.n_layers, g.n_heads, b)
    mlp = torch.zeros(g.n_layers, b)
    bias = torch.zeros(g.n_layers, b)
    parts = rec.resid[0][:, 0].float().to(out)
    embed = dla(rec.resid[0][:, 0]).cpu()
    for layer in range(g.n_layers):
        result = torch.einsum("bhd,hdm->bhm", rec.z[layer][:, 0].float(), a.W_O(layer).float())
        b_o = a.b_O(layer)
        b_written = None if b_o is None else b_o.float().expand(b, -1)
        post = a.attn_post_norm_spec(layer)
        if post is not None:  # Gemma 2/3 sandwich norm: heads enter the residual through it, linearised at
            # the block's whole output (its scale frozen), so heads and bias still sum to what the block writes
            lin = post.linearised(rec.attn_out[layer][:, 0].float())
            result = lin(result)
            b_written = None if b_written is None else lin(b_written)
            if post.bias is not None:
                b_written = post.bias.float().expand(b, -1) if b_written is None else b_written + post.bias.float()
        heads[layer] = dla(result).T.cpu()
        parts = parts + result.sum(1).to(out)
        if b_written is not None:
            bias[layer] = dla(b_written).cpu()
            parts = parts + b_written.to(out)
        if has_mlp:
            m_out = rec.mlp_out[layer][:, 0].float()
            mlp_post = a.mlp_post_norm_spec(layer)
            if mlp_post is not None:  # the MLP's own post-norm, applied exactly (one component)
                m_out = mlp_post(m_out)
        else:  # no MLP module exposed (OPT): the block's remainder after attention
            m_out = (rec.resid[layer + 1][:, 0] - rec.resid[layer][:, 0] - rec.attn_out[layer][:, 0]).float()
        mlp[layer] = dla(m_out).cpu()
        parts = parts + m_out.to(out)
    assert rec.logits is not None
    total = metric(rec.logits).cpu()
    rest = dla(resid_final.float().to(out) - parts)  # structural leftover: ~0 (post-norms are linearised above)
    if frozen is not None and frozen.bias is not None:
        rest = rest + (frozen.bias * u).sum(-1)
    u_bias = a.unembed_bias()
    if u_bias is not None:
        ub = u_bias.float()
        tgt = ub[metric.target_id]
        rest = rest + (tgt - ub[metric.wrong_id] if metric.kind == "logit_diff" else tgt)
    if a.final_logit_softcap() is not None:  # the cap bends the logits after the linear unembedding
        with torch.no_grad():
            uncapped = a.readout(resid_final, softcap=False)
        rest = rest + total.to(rest.device) - metric.from_end_logits(uncapped).to(rest.device)
    rest = rest.cpu()
    return DLAResult(metric=metric.kind, heads=heads, mlp=mlp, attn_bias=bias, embed=embed, rest=rest, total=total)


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, kw_only=True)
class DLAConfig(MethodConfig):
    """Direct logit attribution has no options of its own."""


class DirectLogitAttribution(CausalMethod[DLAConfig]):
    """Direct contributions of every head, MLP, attention bias and the embedding (one forward)."""

    name = "dla"
    run_kind = "dla"
    config_cls = DLAConfig

    def metric_kind(self, requested: str) -> str:
        return requested if requested in ("logit_diff", "logit") else "logit"  # linear in the logits

    def run(self, lm: LoadedModel, config: DLAConfig, inputs: CausalInputs) -> DLAResult:
        return direct_logit_attribution(lm, inputs.clean_ids, inputs.clean_mask, inputs.metric)


register_method(DirectLogitAttribution())
