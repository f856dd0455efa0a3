"""Orchestration for the causal methods: task -> batches + metric -> method -> tidy table -> atlas.

``run_causal(lm, config)`` finds the registered method that owns ``config``'s type, builds the
inputs it asks for and runs it, all in memory; the ``CausalRun`` it returns is a ``JobResult``, so
``headmine.atlas.write_job(run, path)`` writes ONE atlas run (scores, the exact clean/corrupted
token ids, the method's artifacts) in one transaction, and a failure leaves no partial run. Nothing here names a method: each one declares what it needs (see
``headmine.causal.methods``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from headmine.atlas import AtlasRun, InputRow, JobResult, RunRecord, score_rows, utc_now
from headmine.causal.methods import (
    CausalInputs,
    CausalMethod,
    MethodConfig,
    MethodResult,
    get_method,
    method_for,
)
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError, TaskError
from headmine.models.loading import LoadedModel
from headmine.tasks import TASKS, PromptItem, load_task


@dataclass(frozen=True, kw_only=True)
class CausalRun(JobResult):
    """One causal job's result in memory: the method, its config and inputs, and what it measured."""

    method: CausalMethod[Any]
    config: MethodConfig
    model: str
    model_info: dict[str, Any]
    inputs: CausalInputs
    result: MethodResult
    frame: pd.DataFrame
    matrix: np.ndarray | None  # [L, H] head effects for heatmaps (None when the method has no head matrix)
    duration_s: float
    started_at: str

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        """ONE run of the method's kind: scores (NaN values left out), the exact inputs (clean /
        corrupted token ids), the method's artifacts and its head matrix."""
        inp, c, m = self.inputs, self.config, self.method
        record = RunRecord(
            kind=m.run_kind, model=self.model, model_info=self.model_info, task=inp.task,
            params={"config": {"method": m.name, **c.to_dict()}, "task_params": inp.task_params, "metric": inp.metric.kind},
            seeds={"seed": c.seed}, started_at=self.started_at, duration_s=float(self.duration_s), group_id=group_id,
        )
        artifacts: dict[str, Any] = dict(self.result.artifacts())
        if self.matrix is not None:
            artifacts["head_matrix"] = np.asarray(self.matrix)
        return AtlasRun(record=record, scores=score_rows(self.frame, skip_nan_values=True), inputs=_input_rows(inp),
                        artifacts=artifacts)


def resolve_method(config: MethodConfig, method: str | CausalMethod[Any] | None = None) -> CausalMethod[Any]:
    """The method named by ``method`` (a name or the object), else the one whose config class ``config`` is."""
    if method is None:
        return method_for(config)
    m = get_method(method) if isinstance(method, str) else method
    if not isinstance(config, m.config_cls):
        raise InputError(f"{m.name} takes a {m.config_cls.__name__}, not a {type(config).__name__}",
                         f"build the config with get_method({m.name!r}).config(...)")
    return m


def _item_name(item: PromptItem, i: int) -> str:
    line = item.meta.get("line") if isinstance(item.meta, dict) else None
    return f"line {line}" if line is not None else f"prompt {i}"


def prepare_inputs(lm: LoadedModel, method: CausalMethod[Any], config: MethodConfig) -> CausalInputs:
    """Build the task and check it fits ``method``; errors name the offending line / prompt."""
    params = dict(config.task_params)
    params.setdefault("n", config.n)
    if config.task in TASKS:
        params.setdefault("seed", config.seed)
    ps = load_task(config.task, lm.tokenizer, **params)
    if len(ps) == 0:
        raise TaskError(f"task {config.task!r} has no prompts", "check the input file")
    for i, it in enumerate(ps.items):
        if len(it.target_ids) != 1:
            raise TaskError(
                f"{_item_name(it, i)}: target {it.target!r} is {len(it.target_ids)} tokens; {method.name} needs one",
                "use single-token targets (mind the leading space, e.g. ' Paris')",
            )
        lm.check_length(len(it.ids))
    needs = method.needs_corrupted(config)
    if needs:
        paired = method.paired_lengths(config)
        for i, it in enumerate(ps.items):
            if it.corrupted_ids is None:
                raise TaskError(f"{_item_name(it, i)}: no corrupted prompt; {method.name} needs one for every prompt",
                                "add corrupted_prompt to every line")
            if paired and len(it.corrupted_ids) != len(it.ids):
                raise TaskError(
                    f"{_item_name(it, i)}: clean prompt is {len(it.ids)} tokens but the corrupted prompt is "
                    f"{len(it.corrupted_ids)} ({it.prompt!r} vs {it.corrupted_prompt!r})",
                    "make both prompts tokenise to the same length (swap single-token words)",
                )
    clean = ps.clean_batch()
    requested = config.metric or ("logit_diff" if ps.metric == "logit_diff" else "prob" if ps.metric == "prob" else "answer_logprob")
    metric = AnswerMetric.from_batch(clean, method.metric_kind(requested))
    corrupted = ps.corrupted_batch() if needs else None
    return CausalInputs(
        clean_ids=clean.input_ids, clean_mask=clean.attention_mask,
        corrupted_ids=None if corrupted is None else corrupted.input_ids,
        corrupted_mask=None if corrupted is None else corrupted.attention_mask,
        metric=metric, task=ps.task, task_params=dict(ps.params),
        clean_texts=list(clean.texts or []), corrupted_texts=None if corrupted is None else list(corrupted.texts or []),
    )


def run_causal(lm: LoadedModel, config: MethodConfig, *, method: str | CausalMethod[Any] | None = None) -> CausalRun:
    """Load the task, run the method, build the tidy table (nothing is written).

    ``method`` defaults to the registered method whose config class ``config`` is.
    """
    m = resolve_method(config, method)
    started = utc_now()
    t0 = time.perf_counter()
    inp = prepare_inputs(lm, m, config)
    result = m.run(lm, config, inp)
    return CausalRun(method=m, config=config, model=lm.name, model_info=lm.model_info(), inputs=inp, result=result,
                     frame=result.frame(), matrix=result.head_matrix(), duration_s=time.perf_counter() - t0,
                     started_at=started)


def _input_rows(inp: CausalInputs) -> list[InputRow]:
    """The exact clean (and corrupted) token ids, with each prompt's answer position and ids."""

    def rows(ids: torch.Tensor, mask: torch.Tensor, texts: list[str] | None, role: str) -> list[InputRow]:
        out = []
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            meta = {"end_pos": int(inp.metric.end_pos[i]), "target_id": int(inp.metric.target_id[i])}
            if inp.metric.wrong_id is not None:
                meta["wrong_id"] = int(inp.metric.wrong_id[i])
            out.append(InputRow(idx=i, token_ids=tuple(ids[i, :n].tolist()), role=role,
                                text=texts[i] if texts and i < len(texts) else None, meta=meta))
        return out

    out = rows(inp.clean_ids, inp.clean_mask, inp.clean_texts, "clean")
    if inp.corrupted_ids is not None and inp.corrupted_mask is not None:
        out += rows(inp.corrupted_ids, inp.corrupted_mask, inp.corrupted_texts, "corrupted")
    return out
