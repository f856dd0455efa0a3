"""Run the model under typed interventions at head sites.

One forward pre-hook per affected layer on the attention output projection rewrites its input
(concat of per-head z). Several interventions may be active; they apply in the order given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from headmine.capture.hooks import HookSpec, hooks
from headmine.causal.interventions import Gate, Intervention
from headmine.core.errors import InputError
from headmine.models.loading import LoadedModel


def _validate(loaded: LoadedModel, interventions: Sequence[Intervention]) -> None:
    g = loaded.geometry
    for iv in interventions:
        if isinstance(iv, Gate):
            if tuple(iv.factors.shape[-2:]) != (g.n_layers, g.n_heads):
                raise InputError(
                    f"Gate factors have shape {tuple(iv.factors.shape)}; expected [..., {g.n_layers}, {g.n_heads}]",
                    "give one factor per (layer, query head)",
                )
        for h in iv.heads:
            g.check_head(h.layer, h.head)


def _layer_hook(loaded: LoadedModel, layer: int, ivs: list[Intervention]) -> Callable:
    g = loaded.geometry

    def fn(module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        z = x.unflatten(-1, (g.n_heads, g.d_head))
        for iv in ivs:
            z = iv.apply(layer, z)
        new = z.flatten(-2)
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "input": new}

    return fn


@contextmanager
def intervening(loaded: LoadedModel, interventions: Sequence[Intervention]) -> Iterator[None]:
    """Apply ``interventions`` to every forward pass inside the block; hooks are removed on exit."""
    _validate(loaded, interventions)
    by_layer: dict[int, list[Intervention]] = {}
    for iv in interventions:
        for layer in sorted(iv.layers()):
            by_layer.setdefault(layer, []).append(iv)
    specs = [HookSpec(loaded.adapter.out_proj(layer), "pre", _layer_hook(loaded, layer, ivs)) for layer, ivs in sorted(by_layer.items())]
    with hooks(specs):
        yield


def run_with_interventions(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    interventions: Sequence[Intervention] = (),
    *,
    grad: bool = False,
) -> torch.Tensor:
    """Logits of one forward pass under ``interventions`` (``grad=True`` keeps the graph)."""
    loaded.check_length(input_ids.shape[-1])
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, intervening(loaded, interventions):
        out = loaded.model(
            input_ids=input_ids.to(loaded.device),
            attention_mask=None if attention_mask is None else attention_mask.to(loaded.device),
        )
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
