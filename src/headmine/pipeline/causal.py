"""Orchestration for the causal methods: task -> batches + metric -> method -> tidy table -> atlas.

``run_causal(lm, CausalConfig(...))`` computes everything in memory; ``write_causal(run, path)``
then writes ONE atlas run (scores and the exact clean/corrupted token ids) in one transaction, so a
failure at any point leaves no partial run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import AtlasError, InputError, TaskError
from headmine.models.loading import LoadedModel

METHODS = ("ablation", "patching", "path_patching", "attribution", "dla", "logit_lens")
RUN_KIND = {"ablation": "ablation", "patching": "patching", "path_patching": "patching", "attribution": "attribution",
            "dla": "dla", "logit_lens": "logit_lens"}
NEEDS_CORRUPTED = ("patching", "path_patching", "attribution")


@dataclass(frozen=True, kw_only=True)
class CausalConfig:
    """One causal job. ``task``: a registered task name or a JSONL path; ``task_params`` go to its builder."""

    method: str
    task: str
    n: int = 32
    seed: int = 0
    metric: str | None = None
    mode: str = "zero"  # ablation
    reference: str = "self"  # ablation mean/resample reference: "self" (the prompts) or "corrupted"
    direction: str = "noising"  # patching
    per_position: bool = False  # patching, attribution
    ig_steps: int = 0  # attribution
    receivers: str = "logits"  # path patching: "logits" or "L1H2,L1H3"
    receiver_input: str = "qkv"
    max_rows: int = 512
    task_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown causal method {self.method!r}", f"use one of {METHODS}")
        if self.n < 1:
            raise InputError(f"n must be >= 1, got {self.n}", "ask for at least one prompt")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class CausalInputs:
    """Tensors a method needs, with the task's identity for provenance."""

    clean_ids: torch.Tensor
    clean_mask: torch.Tensor
    corrupted_ids: torch.Tensor | None
    corrupted_mask: torch.Tensor | None
    metric: AnswerMetric
    task: str
    task_params: dict[str, Any]
    clean_texts: list[str]
    corrupted_texts: list[str] | None


@dataclass(frozen=True, kw_only=True)
class CausalRun:
    config: CausalConfig
    model: str
    model_info: dict[str, Any]
    inputs: CausalInputs
    result: Any
    frame: pd.DataFrame
    matrix: np.ndarray | None  # [L, H] head effects for heatmaps (None for the logit lens)
    duration_s: float
    started_at: str


def _item_name(item: Any, i: int) -> str:
    line = item.meta.get("line") if isinstance(item.meta, dict) else None
    return f"line {line}" if line is not None else f"prompt {i}"


def prepare_inputs(lm: LoadedModel, config: CausalConfig) -> CausalInputs:
    """Build the task and check it fits the method; errors name the offending line / prompt."""
    from headmine.tasks import load_task

    params = dict(config.task_params)
    params.setdefault("n", config.n)
    if config.task in _registered_tasks():
        params.setdefault("seed", config.seed)
    ps = load_task(config.task, lm.tokenizer, **params)
    if len(ps) == 0:
        raise TaskError(f"task {config.task!r} has no prompts", "check the input file")
    for i, it in enumerate(ps.items):
        if len(it.target_ids) != 1:
            raise TaskError(
                f"{_item_name(it, i)}: target {it.target!r} is {len(it.target_ids)} tokens; {config.method} needs one",
                "use single-token targets (mind the leading space, e.g. ' Paris')",
            )
        lm.check_length(len(it.ids))
    needs = config.method in NEEDS_CORRUPTED or (config.method == "ablation" and config.reference == "corrupted")
    if needs:
        for i, it in enumerate(ps.items):
            if it.corrupted_ids is None:
                raise TaskError(f"{_item_name(it, i)}: no corrupted prompt; {config.method} needs one for every prompt",
                                "add corrupted_prompt to every line")
            if len(it.corrupted_ids) != len(it.ids) and (config.method != "ablation" or config.mode == "resample"):
                raise TaskError(
                    f"{_item_name(it, i)}: clean prompt is {len(it.ids)} tokens but the corrupted prompt is "
                    f"{len(it.corrupted_ids)} ({it.prompt!r} vs {it.corrupted_prompt!r})",
                    "make both prompts tokenise to the same length (swap single-token words)",
                )
    clean = ps.clean_batch()
    kind = config.metric or ("logit_diff" if ps.metric == "logit_diff" else "prob" if ps.metric == "prob" else "answer_logprob")
    if config.method == "dla" and kind not in ("logit_diff", "logit"):
        kind = "logit"
    metric = AnswerMetric.from_batch(clean, kind)
    corrupted = ps.corrupted_batch() if needs else None
    return CausalInputs(
        clean_ids=clean.input_ids, clean_mask=clean.attention_mask,
        corrupted_ids=None if corrupted is None else corrupted.input_ids,
        corrupted_mask=None if corrupted is None else corrupted.attention_mask,
        metric=metric, task=ps.task, task_params=dict(ps.params),
        clean_texts=list(clean.texts or []), corrupted_texts=None if corrupted is None else list(corrupted.texts or []),
    )


def _registered_tasks() -> list[str]:
    from headmine.tasks import TASKS

    return TASKS.names()


def parse_heads(text: str) -> list[Any]:
    """"L1H2,L1H3" -> [HeadId(1, 2), HeadId(1, 3)]."""
    import re

    from headmine.core.ids import HeadId

    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"[Ll](\d+)[Hh](\d+)", part)
        if not m:
            raise InputError(f"cannot read head {part!r}", "write heads as L<layer>H<head>, e.g. L1H2")
        out.append(HeadId(int(m.group(1)), int(m.group(2))))
    return out


def run_method(lm: LoadedModel, config: CausalConfig, inp: CausalInputs) -> Any:
    """Dispatch to the method; returns its result object (HeadEffects, DLAResult or LensResult)."""
    c = config
    if c.method == "ablation":
        from headmine.causal.ablation import ablation_sweep

        ref = c.reference == "corrupted"
        return ablation_sweep(lm, inp.clean_ids, inp.clean_mask, inp.metric, mode=c.mode,
                              reference_ids=inp.corrupted_ids if ref else None,
                              reference_mask=inp.corrupted_mask if ref else None, seed=c.seed, max_rows=c.max_rows)
    if c.method == "patching":
        from headmine.causal.activation_patching import activation_patching

        return activation_patching(lm, inp.clean_ids, inp.clean_mask, inp.corrupted_ids, inp.corrupted_mask,  # type: ignore[arg-type]
                                   inp.metric, direction=c.direction, per_position=c.per_position, max_rows=c.max_rows)
    if c.method == "path_patching":
        from headmine.causal.path_patching import path_patching

        receivers: Any = "logits" if c.receivers == "logits" else parse_heads(c.receivers)
        return path_patching(lm, inp.clean_ids, inp.clean_mask, inp.corrupted_ids, inp.corrupted_mask,  # type: ignore[arg-type]
                             inp.metric, receivers=receivers, receiver_input=c.receiver_input, max_rows=min(c.max_rows, 256))
    if c.method == "attribution":
        from headmine.causal.attribution_patching import attribution_patching

        return attribution_patching(lm, inp.clean_ids, inp.clean_mask, inp.corrupted_ids, inp.corrupted_mask,  # type: ignore[arg-type]
                                    inp.metric, ig_steps=c.ig_steps, per_position=c.per_position)
    if c.method == "dla":
        from headmine.causal.direct_logit_attribution import direct_logit_attribution

        return direct_logit_attribution(lm, inp.clean_ids, inp.clean_mask, inp.metric)
    from headmine.causal.logit_lens import logit_lens

    return logit_lens(lm, inp.clean_ids, inp.clean_mask, inp.metric)


def run_causal(lm: LoadedModel, config: CausalConfig) -> CausalRun:
    """Load the task, run the method, build the tidy table (nothing is written)."""
    from headmine.atlas import utc_now
    from headmine.pipeline.scan import _model_info

    started = utc_now()
    t0 = time.perf_counter()
    inp = prepare_inputs(lm, config)
    result = run_method(lm, config, inp)
    frame = result.frame()
    matrix = None
    if hasattr(result, "effects"):
        e = result.effects
        matrix = (e.abs().amax(-1) if e.dim() == 3 else e).numpy()
    elif hasattr(result, "heads"):
        matrix = result.heads.mean(-1).numpy()
    return CausalRun(config=config, model=lm.name, model_info=_model_info(lm), inputs=inp, result=result, frame=frame,
                     matrix=matrix, duration_s=time.perf_counter() - t0, started_at=started)


def write_causal(run: CausalRun, atlas_path: str, *, group_id: str | None = None) -> int:
    """Write ONE atlas run: scores, exact inputs (clean / corrupted token ids), baseline metrics."""
    import math

    from headmine.atlas import Atlas, InputRow, RunRecord, ScoreRow

    inp, c = run.inputs, run.config
    record = RunRecord(
        kind=RUN_KIND[c.method], model=run.model, model_info=run.model_info, task=inp.task,
        params={"config": c.to_dict(), "task_params": inp.task_params, "metric": inp.metric.kind},
        seeds={"seed": c.seed}, started_at=run.started_at, duration_s=float(run.duration_s), group_id=group_id,
    )

    def scores():
        for r in run.frame.itertuples(index=False):
            err = None if r.stderr is None or (isinstance(r.stderr, float) and math.isnan(r.stderr)) else float(r.stderr)
            if isinstance(r.value, float) and math.isnan(r.value):
                continue
            yield ScoreRow(component=r.component, layer=int(r.layer), head=int(r.head), method=r.method, metric=r.metric,
                           value=float(r.value), n=int(r.n), stderr=err)

    def rows(ids: torch.Tensor, mask: torch.Tensor, texts: list[str] | None, role: str) -> list[Any]:
        out = []
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            meta = {"end_pos": int(inp.metric.end_pos[i]), "target_id": int(inp.metric.target_id[i])}
            if inp.metric.wrong_id is not None:
                meta["wrong_id"] = int(inp.metric.wrong_id[i])
            out.append(InputRow(idx=i, token_ids=ids[i, :n].tolist(), role=role,
                                text=texts[i] if texts and i < len(texts) else None, meta=meta))
        return out

    inputs = rows(inp.clean_ids, inp.clean_mask, inp.clean_texts, "clean")
    if inp.corrupted_ids is not None and inp.corrupted_mask is not None:
        inputs += rows(inp.corrupted_ids, inp.corrupted_mask, inp.corrupted_texts, "corrupted")
    artifacts: dict[str, Any] = {}
    res = run.result
    if hasattr(res, "baseline"):
        artifacts["baseline"] = res.baseline.numpy()
        if getattr(res, "reference", None) is not None:
            artifacts["reference"] = res.reference.numpy()
        artifacts["per_prompt"] = res.values.numpy()
    if run.matrix is not None:
        artifacts["head_matrix"] = np.asarray(run.matrix)
    try:
        with Atlas.open(atlas_path) as db:
            return db.write_run(record, scores=scores(), inputs=inputs, artifacts=artifacts)
    except AtlasError:
        raise
    except Exception as err:  # write_run is one transaction: nothing was written
        raise AtlasError(f"could not write the {c.method} run to {atlas_path}: {err}", "check the atlas path and disk space") from err
