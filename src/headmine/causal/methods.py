"""The causal-method registry: one object per method, registered in the method's own file.

A ``CausalMethod`` owns everything the pipeline needs to know about a method: its name, the atlas
run kind it writes, its own config dataclass, whether it needs corrupted prompts (and of equal
token length), the metric kind it can measure, and how it runs on prepared ``CausalInputs``. Its
result follows the ``MethodResult`` protocol (tidy rows, an optional layer x head matrix, extra
arrays to store). ``pipeline/causal.py`` loops over ``METHODS`` and never names a method, so a new
method is one file that subclasses ``CausalMethod`` and calls ``register_method``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast, runtime_checkable

import numpy as np
import pandas as pd
import torch

from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError
from headmine.core.registry import Registry
from headmine.models.loading import LoadedModel


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """What every causal job shares. ``task``: a registered task name or a JSONL path; ``n``
    prompts; ``metric``: the metric kind (default: the task's); ``max_rows``: rows per batched
    forward in sweeps; ``task_params`` go to the task's builder. Methods subclass this with their
    own (frozen, keyword-only) options."""

    task: str
    n: int = 32
    seed: int = 0
    metric: str | None = None
    max_rows: int = 512
    task_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"n must be >= 1, got {self.n}", "ask for at least one prompt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class CausalInputs:
    """Tensors a method needs, with the task's identity for provenance. ``corrupted_*`` are None
    unless the method asked for corrupted prompts."""

    clean_ids: torch.Tensor
    clean_mask: torch.Tensor
    corrupted_ids: torch.Tensor | None
    corrupted_mask: torch.Tensor | None
    metric: AnswerMetric
    task: str
    task_params: dict[str, Any]
    clean_texts: list[str]
    corrupted_texts: list[str] | None

    def corrupted(self, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The corrupted ids and mask; InputError when they were not prepared."""
        if self.corrupted_ids is None or self.corrupted_mask is None:
            raise InputError(f"{method} needs corrupted prompts but none were prepared",
                             "declare needs_corrupted() on the method so prepare_inputs builds them")
        return self.corrupted_ids, self.corrupted_mask


@runtime_checkable
class MethodResult(Protocol):
    """What a method returns, in the terms the writer and the CLI need."""

    def frame(self) -> pd.DataFrame:
        """Tidy score rows (``core.tables.SCORE_COLUMNS``)."""
        ...

    def head_matrix(self) -> np.ndarray | None:
        """[L, H] effect per head for heatmaps and the atlas artifact; None when the method has none."""
        ...

    def artifacts(self) -> dict[str, np.ndarray]:
        """Extra arrays stored with the run (e.g. per-prompt baselines); the head matrix is added by the writer."""
        ...


C = TypeVar("C", bound=MethodConfig)


class CausalMethod(ABC, Generic[C]):
    """One causal method. Subclasses set ``name``, ``run_kind`` and ``config_cls`` and implement ``run``."""

    name: ClassVar[str]
    run_kind: ClassVar[str]  # the atlas run kind (several methods may share one, e.g. "patching")
    config_cls: ClassVar[type[MethodConfig]]

    def config(self, **options: Any) -> C:
        """Build this method's config from keyword options (validated by the dataclass)."""
        # config_cls is C's class; a ClassVar cannot name the type variable, so the checker sees MethodConfig
        return cast(C, self.config_cls(**options))

    def needs_corrupted(self, config: C) -> bool:
        """Whether every prompt needs a corrupted counterpart."""
        return False

    def paired_lengths(self, config: C) -> bool:
        """With corrupted prompts: whether each must tokenise to its clean prompt's length."""
        return True

    def metric_kind(self, requested: str) -> str:
        """The metric kind this method measures when ``requested`` is asked (e.g. DLA needs a logit metric)."""
        return requested

    @abstractmethod
    def run(self, lm: LoadedModel, config: C, inputs: CausalInputs) -> MethodResult:
        """Compute the method's result in memory (nothing is written)."""


METHODS: Registry[CausalMethod[Any]] = Registry("causal method", unknown_error=InputError, plugin_group="headmine.methods")


def register_method(method: CausalMethod[Any]) -> CausalMethod[Any]:
    """Add ``method`` under its name; the name must be new and its config a ``MethodConfig``."""
    if not (isinstance(method.config_cls, type) and issubclass(method.config_cls, MethodConfig)):
        raise TypeError(f"{type(method).__name__}.config_cls must subclass MethodConfig")
    return METHODS.register(method.name)(method)


def get_method(name: str) -> CausalMethod[Any]:
    """The registered method called ``name`` (InputError listing the known ones otherwise)."""
    return METHODS.get(name)


def method_for(config: MethodConfig) -> CausalMethod[Any]:
    """The registered method whose config class is exactly ``type(config)``."""
    found = [m for _, m in METHODS.items() if type(config) is m.config_cls]
    if len(found) != 1:
        names = ", ".join(m.name for m in found) or "none"
        raise InputError(f"{type(config).__name__} belongs to {len(found)} registered causal methods ({names})",
                         "give each method its own config class, or name the method explicitly")
    return found[0]
