"""Attribution patching (Nanda 2023) for every head at once, and its integrated-gradients variant.

First-order estimate of the noising patching effect of head (l, h):
``effect ~= sum_{pos, d} (z_corrupted - z_clean) * dM/dz |_clean``; one clean forward + backward and
one corrupted forward give all heads. ``ig_steps=m > 0`` averages the gradient over m points on the
straight line from the corrupted to the clean *input embeddings* (EAP-IG, Hanna et al. 2024):
alpha = 1/m, ..., 1 (alpha = 1 is the clean input), all m points in one stacked batch.

The gradient with respect to z is taken through an additive zero ``delta`` on z (an
``Intervention`` on the one engine), so the model's forward is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from headmine.capture import CaptureSpec, capturing
from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.ablation import reference_z
from headmine.causal.activation_patching import check_pairs
from headmine.causal.engine import intervening
from headmine.causal.interventions import Intervention
from headmine.causal.methods import CausalInputs, CausalMethod, MethodConfig, register_method
from headmine.causal.metrics import AnswerMetric, HeadEffects
from headmine.core.errors import InputError
from headmine.core.ids import Site
from headmine.models.loading import LoadedModel


@dataclass(frozen=True, kw_only=True)
class AddDelta(Intervention):
    """z + ``deltas[layer]`` ([batch, pos, head, d_head]); with zero deltas that require grad, the
    deltas' gradients are the gradients with respect to z."""

    deltas: Mapping[int, torch.Tensor] = field(default_factory=dict)

    def layers(self) -> set[int]:
        return set(self.deltas)

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return z + self.deltas[layer].to(z.dtype)


def _embedding_override(values: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Forward hook: the embedding module outputs ``values`` instead (IG interpolation points)."""

    def fn(module, args, kwargs, output):
        return values.to(output.dtype)

    return fn


def z_gradients(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    metric: AnswerMetric,
    *,
    embeddings: torch.Tensor | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """One forward + backward: (z per layer, dM/dz per layer, metric per row), z/grads [R, T, H, d].

    ``embeddings`` [R, T, d_model] replaces the embedding module's output (IG interpolation); rows
    may then be a multiple of the metric's prompts (variant-major).
    """
    g = loaded.geometry
    r, t = input_ids.shape
    # float32 deltas on each layer's own device: the gradient of a bf16 run lands here in float32
    deltas = {layer: torch.zeros(r, t, g.n_heads, g.d_head, requires_grad=True, device=loaded.layer_device(layer))
              for layer in range(g.n_layers)}
    spec = CaptureSpec(sites=frozenset({Site.Z}), keep_logits=False)
    extra = [] if embeddings is None else [HookSpec(loaded.adapter.embedding(), "forward", _embedding_override(embeddings))]
    with torch.enable_grad(), hooks(extra), intervening(loaded, [AddDelta(deltas=deltas)]), \
            capturing(loaded, spec, input_ids, attention_mask) as box:
        out = loaded.model(input_ids=input_ids.to(loaded.device), attention_mask=attention_mask.to(loaded.device), use_cache=False)
        values = metric(out.logits)
        values.sum().backward()
    rec = box["record"]
    grads: dict[int, torch.Tensor] = {}
    for layer, d in deltas.items():
        assert d.grad is not None  # every delta is added to its layer's z, so backward reaches it
        grads[layer] = d.grad.detach()
    z = {layer: rec.z[layer].detach() for layer in range(g.n_layers)}
    return z, grads, values.detach().cpu()


def attribution_patching(
    loaded: LoadedModel,
    clean_ids: torch.Tensor,
    clean_mask: torch.Tensor | None,
    corrupted_ids: torch.Tensor,
    corrupted_mask: torch.Tensor | None,
    metric: AnswerMetric,
    *,
    ig_steps: int = 0,
    per_position: bool = False,
) -> HeadEffects:
    """Estimated noising patching effect of every head (``values`` [L, H, B] or [L, H, T, B] deltas)."""
    if ig_steps < 0:
        raise InputError(f"ig_steps must be >= 0, got {ig_steps}", "0 = plain attribution patching, ~5 for EAP-IG")
    g = loaded.geometry
    clean_mask = torch.ones_like(clean_ids) if clean_mask is None else clean_mask
    corrupted_mask = torch.ones_like(corrupted_ids) if corrupted_mask is None else corrupted_mask
    check_pairs(clean_ids, clean_mask, corrupted_ids, corrupted_mask)
    corr = reference_z(loaded, corrupted_ids, corrupted_mask)
    b, t = clean_ids.shape
    if ig_steps == 0:
        z, grads, baseline = z_gradients(loaded, clean_ids, clean_mask, metric)
    else:
        emb = loaded.adapter.embedding()
        with torch.no_grad():
            e_clean = emb(clean_ids.to(loaded.device))
            e_corr = emb(corrupted_ids.to(loaded.device))
        alphas = torch.arange(1, ig_steps + 1, dtype=e_clean.dtype, device=e_clean.device) / ig_steps
        interp = e_corr[None] + alphas[:, None, None, None] * (e_clean - e_corr)[None]
        z_all, g_all, vals = z_gradients(loaded, clean_ids.repeat(ig_steps, 1), clean_mask.repeat(ig_steps, 1), metric,
                                         embeddings=interp.reshape(ig_steps * b, t, -1))
        z = {layer: v[-b:] for layer, v in z_all.items()}  # alpha = 1: the clean run
        grads = {layer: v.view(ig_steps, b, *v.shape[1:]).mean(0) for layer, v in g_all.items()}
        baseline = vals[-b:]
    shape = (g.n_layers, g.n_heads, t, b) if per_position else (g.n_layers, g.n_heads, b)
    out = torch.empty(shape)
    real = clean_mask[:, :, None, None].to(torch.float32)
    for layer in range(g.n_layers):
        zl = z[layer].float()  # products and sums in float32 whatever the model's dtype
        contrib = ((corr.z[layer].to(zl.device, torch.float32) - zl) * grads[layer].float() * real.to(zl.device)).sum(-1)
        # contrib [B, T, H]
        out[layer] = (contrib.permute(2, 1, 0) if per_position else contrib.sum(1).T).cpu()
    method = "attribution" if ig_steps == 0 else f"attribution_ig{ig_steps}"
    return HeadEffects(method=method, metric=metric.kind, values=out, baseline=baseline, is_delta=True)


# --------------------------------------------------------------------------- registration
@dataclass(frozen=True, kw_only=True)
class AttributionConfig(MethodConfig):
    """``ig_steps``: 0 for attribution patching, N for integrated gradients with N steps;
    ``per_position``: one estimate per position."""

    ig_steps: int = 0
    per_position: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ig_steps < 0:
            raise InputError(f"ig_steps must be >= 0, got {self.ig_steps}", "0 = plain attribution patching, ~5 for EAP-IG")


class AttributionPatching(CausalMethod[AttributionConfig]):
    """First-order estimate of every head's noising patching effect in one forward/backward."""

    name = "attribution"
    run_kind = "attribution"
    config_cls = AttributionConfig

    def needs_corrupted(self, config: AttributionConfig) -> bool:
        return True

    def run(self, lm: LoadedModel, config: AttributionConfig, inputs: CausalInputs) -> HeadEffects:
        corrupted_ids, corrupted_mask = inputs.corrupted(self.name)
        return attribution_patching(lm, inputs.clean_ids, inputs.clean_mask, corrupted_ids, corrupted_mask,
                                    inputs.metric, ig_steps=config.ig_steps, per_position=config.per_position)


register_method(AttributionPatching())
