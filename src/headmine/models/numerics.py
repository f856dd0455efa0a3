"""NaN and inf: found where they start, reported by layer and head, never silently turned into scores.

Two checks. At load time, :func:`check_weights` refuses a model whose parameters hold non-finite
values and names the parameter (and its layer). At run time, :func:`install_finite_check` puts one
forward hook on the base model (every path runs through it: plain forwards, captures, interventions,
gradients, ``generate``): when the final hidden states of the real (unpadded) positions are not all
finite, it runs the same forward again without gradients, watching the embeddings, each layer's
per-head attention outputs ``z`` (the input of the output projection) and each layer's output, and
raises a :class:`~headmine.core.errors.NumericalError` naming the first place the values went bad,
e.g. "layer 3, heads L3H1, L3H4". Methods stop cleanly on it; the CHG fit turns it into a stopped
stage that keeps its last good gates.

The check costs one ``isfinite`` pass over the final hidden states per forward (no logits).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from headmine.core.errors import ModelLoadError, NumericalError

_LAYER_RE = re.compile(r"\.(?:layers|h|layer)\.(\d+)\.")

FINITE_HINT = ("check the weights (`headmine doctor MODEL`), the dtype (float16 overflows: use --dtype bfloat16 or "
               "float32) and any edit active in this forward (scales, steering vectors, gates)")


def check_weights(model: nn.Module, name: str) -> None:
    """Raise :class:`ModelLoadError` naming the first parameters that hold NaN or inf (and their layers)."""
    bad = []
    for pname, p in model.named_parameters():
        if p.is_floating_point() and p.device.type != "meta" and not torch.isfinite(p).all():
            n_bad = int((~torch.isfinite(p)).sum())
            m = _LAYER_RE.search(f".{pname}")
            where = f" (layer {m.group(1)})" if m else ""
            bad.append(f"{pname}{where}: {n_bad} of {p.numel()} values")
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelLoadError(f"{name} has NaN or inf weights: {shown}",
                             "the file is damaged or was saved from a diverged run: download or convert it again")


def _real_rows(hidden: torch.Tensor, mask: Any) -> torch.Tensor:
    """The rows of ``hidden`` [B, T, ...] at real (unmasked) positions when a 2-D mask is given."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == hidden.shape[:2]:
        return hidden[mask.to(hidden.device).bool()]
    return hidden


def _first_output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if isinstance(hidden, torch.Tensor) else None


def locate_nonfinite(lm: Any, base: nn.Module, args: tuple, kwargs: dict) -> str:
    """Run ``base(*args, **kwargs)`` again (no gradients) and say where non-finite values first appear."""
    g = lm.geometry
    adapter = lm.adapter
    mask = kwargs.get("attention_mask")
    events: list[str] = []

    def watch(label: str) -> Callable:
        def fn(module, inputs, output):
            t = _first_output(output)
            if t is not None and not events and not torch.isfinite(_real_rows(t, mask)).all():
                events.append(label)
        return fn

    def watch_heads(layer: int) -> Callable:
        def fn(module, inputs):
            if events or not inputs:
                return
            z = inputs[0].unflatten(-1, (g.n_heads, g.d_head))
            ok = torch.isfinite(_real_rows(z, mask)).reshape(-1, g.n_heads, g.d_head).all(dim=(0, 2))
            if not ok.all():
                heads = ", ".join(f"L{layer}H{h}" for h in torch.nonzero(~ok).flatten().tolist())
                events.append(f"layer {layer}, in the attention output z of head(s) {heads}")
        return fn

    with ExitStack() as stack, torch.no_grad():
        handles = [adapter.embedding().register_forward_hook(watch("the token embeddings"))]
        for layer in range(g.n_layers):
            handles.append(adapter.out_proj(layer).register_forward_pre_hook(watch_heads(layer)))
            handles.append(adapter.layer(layer).register_forward_hook(
                watch(f"layer {layer}, after its attention heads (in the layer's MLP, norms or residual sum)")))
        for h in handles:
            stack.callback(h.remove)
        base._headmine_locating = True  # type: ignore[assignment]  # a plain flag on the module
        stack.callback(setattr, base, "_headmine_locating", False)
        base(*args, **kwargs)
    return events[0] if events else "the final norm (every layer's output was finite)"


def install_finite_check(lm: Any) -> Any:
    """Hook the base model of ``lm`` so that a forward with NaN/inf hidden states raises a
    :class:`NumericalError` naming the layer and heads where they began. Returns the hook handle."""
    base = getattr(lm.model, "base_model", lm.model)

    def check(module, args, kwargs, output):
        if getattr(module, "_headmine_locating", False):
            return None
        hidden = _first_output(output)
        if hidden is None or torch.isfinite(_real_rows(hidden, kwargs.get("attention_mask"))).all():
            return None
        where = locate_nonfinite(lm, module, args, kwargs)
        raise NumericalError(f"NaN or inf values in {lm.name}'s forward pass: they first appear at {where}", FINITE_HINT)

    return base.register_forward_hook(check, with_kwargs=True)
