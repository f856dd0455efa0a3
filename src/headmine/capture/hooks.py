"""The only module that registers torch hooks. Every registration is undone in ``finally``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from torch import nn
from transformers import PreTrainedModel

from headmine.models.base import attention_implementation_of


@dataclass(frozen=True)
class HookSpec:
    """One hook: ``kind`` is "forward" (fn(module, args, kwargs, output)) or "pre" (fn(module, args, kwargs))."""

    module: nn.Module
    kind: str
    fn: Callable[..., Any]


@contextmanager
def hooks(specs: Sequence[HookSpec]) -> Iterator[None]:
    """Install ``specs`` (in order) for the duration of the block; always remove them."""
    handles = []
    try:
        for spec in specs:
            if spec.kind == "forward":
                handles.append(spec.module.register_forward_hook(spec.fn, with_kwargs=True))
            elif spec.kind == "pre":
                handles.append(spec.module.register_forward_pre_hook(spec.fn, with_kwargs=True))
            else:
                raise ValueError(f"unknown hook kind {spec.kind!r}")
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def attention_implementation(model: nn.Module, implementation: str) -> Iterator[str]:
    """Temporarily switch HF attention (e.g. to "eager" so patterns are returned); yields the previous one."""
    previous = attention_implementation_of(model)
    if previous == implementation:
        yield previous
        return
    hf = cast(PreTrainedModel, model)
    hf.set_attn_implementation(implementation)
    try:
        yield previous
    finally:
        hf.set_attn_implementation(previous)


def count_hooks(model: nn.Module) -> int:
    """Number of forward/pre hooks on all submodules (for tests that hooks leave no trace)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
