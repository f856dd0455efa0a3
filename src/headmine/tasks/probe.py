"""What a probe task is: ONE frozen object that owns everything the scan and its causal check need.

```python
from headmine.tasks import CapturePlan, ProbeTask, register_probe

MY_TASK = register_probe(ProbeTask(
    name="my_task", build=my_builder, defaults={"n": 16},
    plan=CapturePlan(query_rows="last"),
    evaluation=Evaluation(metric="loss_my_task", build=my_eval),
))
```

- ``build(tokenizer, *, seed, **params) -> TokenBatch`` makes the probe batch; ``defaults`` are the
  parameters a scan passes unless the user overrides them (the builder's own keyword defaults are
  what ``load_probe`` uses).
- ``plan`` says, as plain data, how the scan captures the batch: which query rows, which layers,
  whether rows are so short that one wide batch is cheaper, and whether the scan decodes greedily.
  Tasks import neither capture nor models: the pipeline turns a plan into a ``CaptureSpec``.
- ``evaluation`` (optional) is how a causal check measures the task: a batch and a metric on the
  model's logits where higher is worse (a loss, or minus a logit difference). A detector names the
  task in its ``CausalCheckSpec``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from headmine.core.errors import TaskError
from headmine.tasks.base import TokenBatch

ProbeBuilder = Callable[..., TokenBatch]
"""``builder(tokenizer, *, seed, **params) -> TokenBatch``, deterministic in ``seed``."""

#: The query rows a plan may name besides a batch-meta key.
QUERY_ROWS = ("all", "last")
#: "all" layers, or only the output of the first block (read as the residual stream entering layer 1).
LAYERS = ("all", "first_output")


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """Greedy decoding instead of one forward per batch: each prompt is extended one token at a
    time for ``max_new_tokens`` steps, every step captured and scored; a prompt counts only when
    ``success(meta, generated)`` holds (its per-step scores are summed).

    Attributes:
        success: ``success(meta, generated) -> bool`` with ``meta`` the prompt's one-row batch
            metadata and ``generated`` the token ids the model produced.
        max_new_tokens: decoding steps; None takes the scan's ``max_new_tokens``.
    """

    success: Callable[[Mapping[str, Any], Sequence[int]], bool]
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise TaskError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True, kw_only=True)
class CapturePlan:
    """How the scan captures a probe task's batch (plain data; the pipeline builds the CaptureSpec).

    Attributes:
        query_rows: "all" query rows, the "last" real token of each row, or the name of a batch-meta
            key holding one position per row (IOI's "END"; the last real token where a batch lacks it).
        layers: "all", or "first_output": only the residual stream after the first block (the
            effective embeddings that OV/QK weight scores read from isolated tokens).
        wide: rows are one or two tokens long: the scan runs them in batches of at least 512.
        decoding: greedy decoding with a success rule (None: one forward per batch).
    """

    query_rows: str = "all"
    layers: str = "all"
    wide: bool = False
    decoding: Decoding | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.query_rows, str) or not self.query_rows:
            raise TaskError(f"query_rows must be {QUERY_ROWS} or a batch-meta key, got {self.query_rows!r}")
        if self.layers not in LAYERS:
            raise TaskError(f"unknown capture layers {self.layers!r}", f"use one of {LAYERS}")

    @property
    def query_key(self) -> str | None:
        """The batch-meta key holding one query position per row, or None for "all"/"last"."""
        return None if self.query_rows in QUERY_ROWS else self.query_rows


@dataclass(frozen=True, kw_only=True)
class EvalBatch:
    """A causal-check evaluation: the batch to run and ``measure(logits) -> float``, higher = worse.

    ``logits`` are the model's [batch, pos, vocab] logits on ``batch.input_ids`` (possibly under
    an intervention)."""

    batch: TokenBatch
    measure: Callable[[torch.Tensor], float]


EvalBuilder = Callable[..., EvalBatch]
"""``build(tokenizer, *, n, seed, **params) -> EvalBatch``."""


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """How a causal check measures a probe task.

    Attributes:
        metric: the metric's name in the atlas (e.g. "loss_second_repeat", "minus_logit_diff").
        build: ``build(tokenizer, *, n, seed, **params) -> EvalBatch``; ``n`` is the scan's
            ``causal_n`` unless ``params`` sets it.
        params: builder parameters of the evaluation batch.
        inherit: scan parameters of the same task that the evaluation keeps when the scan set them
            (e.g. ``seq_len``: a toy model trained on short sequences is evaluated where it was trained).
    """

    metric: str
    build: EvalBuilder
    params: Mapping[str, Any] = field(default_factory=dict)
    inherit: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))  # a private copy

    def kwargs(self, n: int, scan_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The builder's keyword arguments (without the seed) for ``n`` sequences."""
        out: dict[str, Any] = {"n": n, **self.params}
        for key in self.inherit:
            if scan_params and key in scan_params:
                out[key] = scan_params[key]
        return out


@dataclass(frozen=True, kw_only=True)
class ProbeTask:
    """A registered probe task: its builder, scan defaults, capture plan and optional evaluation.

    Attributes:
        name: registry name (also the ``task`` of its batches and of detectors reading it).
        build: ``build(tokenizer, *, seed, **params) -> TokenBatch``.
        defaults: the parameters a scan builds it with (user overrides are merged on top).
        plan: how the scan captures it.
        evaluation: how a causal check measures it (None: no detector can be confirmed on it).
    """

    name: str
    build: ProbeBuilder = field(repr=False)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    plan: CapturePlan = field(default_factory=CapturePlan)
    evaluation: Evaluation | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", dict(self.defaults))  # a private copy

    def __call__(self, tokenizer: Any, **params: Any) -> TokenBatch:
        """The batch built with the builder's own defaults overridden by ``params``."""
        return self.build(tokenizer, **params)

    def params(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The scan's parameters: ``defaults`` with ``overrides`` on top."""
        return {**self.defaults, **dict(overrides or {})}


# --------------------------------------------------------------------------- evaluation helpers
def token_loss(logits: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``ids[:, t]`` from ``logits[:, t-1]`` where ``weight[:, t]`` is 1."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1)
    w = weight[:, 1:].to(nll.dtype).to(nll.device)
    return (nll * w).sum() / w.sum().clamp_min(1)


def loss_on(batch: TokenBatch, weight: torch.Tensor) -> EvalBatch:
    """An evaluation measuring the next-token loss of ``batch`` on the positions ``weight`` marks."""
    ids = batch.input_ids
    return EvalBatch(batch=batch, measure=lambda logits: float(token_loss(logits, ids, weight)))
