"""Scan a model for head types: one capture pass per probe task, streaming scores, causal check.

```python
from headmine.atlas import write_job
from headmine.pipeline.scan import ScanConfig, scan_model
result = scan_model(lm, ScanConfig(detectors=("induction", "previous_token")))
result.scores            # tidy table (all detectors + causal rows)
result.top("induction")  # best heads
run_id = write_job(result, "atlas.db")
```

Detectors are grouped by their probe task; each group gets ONE pass over its batch, shaped by the
task's capture plan (``headmine.pipeline.capture_plans``): the union of the sites its detectors
read, and every detector adds its per-item scores to a ``ScoreAccumulator`` per batch, so only one
batch of activations is ever alive. Token ids of every probe are kept for the atlas (``inputs``).
Nothing here knows a task or detector by name: both come from their registries.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from headmine.atlas import utc_now
from headmine.capture import CaptureSpec
from headmine.capture.run import pattern_plan
from headmine.core.errors import InputError, TaskError
from headmine.core.ids import Site
from headmine.core.tables import SCORE_COLUMNS
from headmine.detectors import Detector, ScoreAccumulator, resolve_detectors
from headmine.detectors.weights import circuit_weights
from headmine.models.loading import LoadedModel
from headmine.pipeline.attention_examples import attention_examples, head_ids
from headmine.pipeline.capture_plans import PassContext, decoding_steps, run_plan
from headmine.pipeline.causal_check import check_declared_tasks, run_causal_checks
from headmine.pipeline.results import CausalCheck, Progress, ScanConfig, ScanResult, probe_sizes
from headmine.tasks import PROBES, TokenBatch, load_probe

__all__ = ["CausalCheck", "Progress", "ScanConfig", "ScanResult", "probe_sizes", "scan_model"]


def _build_probes(lm: LoadedModel, config: ScanConfig, tasks: list[str]) -> tuple[
        dict[str, TokenBatch], dict[str, dict[str, Any]], dict[str, str]]:
    """Every probe batch before any forward pass, so a tokenizer problem (multi-token names...) fails
    early. In a default scan a task this model cannot run is left out with the reason; when the
    user named the detectors, the error is raised."""
    probes: dict[str, TokenBatch] = {}
    params: dict[str, dict[str, Any]] = {}
    not_applicable: dict[str, str] = {}
    for task in tasks:
        params[task] = config.params_for(task)
        try:
            probes[task] = load_probe(task, lm.tokenizer, seed=config.seed, **params[task])
            extra = decoding_steps(PROBES.get(task).plan, config.max_new_tokens)
            lm.check_length(int(probes[task].input_ids.shape[1]) + extra)
        except (TaskError, InputError) as exc:
            if config.detectors:  # the user asked for these detectors: say why they cannot run
                raise
            not_applicable[task] = exc.problem  # default scan: run what this tokenizer supports
            probes.pop(task, None)
    return probes, params, not_applicable


def pattern_source(lm: LoadedModel) -> str:
    """How this scan's captures get patterns on ``lm``: "recomputed from q,k (sdpa forward)", "eager", or
    "eager (switched from ... for this capture)" (``headmine.capture.run.pattern_plan``)."""
    return pattern_plan(lm, CaptureSpec(sites=frozenset({Site.PATTERN})))[1]


def scan_model(lm: LoadedModel, config: ScanConfig | None = None, *, progress: Progress | None = None) -> ScanResult:
    """Run every selected detector, one capture pass per probe task, then the causal checks."""
    config = config or ScanConfig()
    detectors = resolve_detectors(list(config.detectors) if config.detectors else None)
    if config.causal:
        check_declared_tasks(detectors)
    started = utc_now()
    g = lm.geometry
    groups: dict[str, list[Detector]] = {}
    for d in detectors:
        groups.setdefault(d.task, []).append(d)
    probes, probe_params, not_applicable = _build_probes(lm, config, list(groups))
    detectors = [d for d in detectors if d.task not in not_applicable]
    groups = {task: dets for task, dets in groups.items() if task not in not_applicable}
    if not groups:
        raise TaskError(f"no probe task can be built for {lm.name}: {not_applicable}", "use a natural-language model")
    weights = circuit_weights(lm) if any(d.needs_weights for d in detectors) else None
    frames: list[pd.DataFrame] = []
    timings: dict[str, float] = {}
    inputs: dict[str, list[tuple[int, ...]]] = {}
    base_meta = {"n_layers": g.n_layers, "n_heads": g.n_heads}
    for task, dets in groups.items():
        t0 = time.perf_counter()
        probe = probes[task]
        inputs[task] = [tuple(int(t) for t in row[m.bool()].tolist())
                        for row, m in zip(probe.input_ids, probe.attention_mask, strict=True)]
        ctx = PassContext(lm=lm, detectors=dets, accumulators={d.name: ScoreAccumulator() for d in dets},
                          weights=weights, base_meta=base_meta, stage=task, progress=progress)
        run_plan(ctx, PROBES.get(task).plan, probe, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens)
        frames.extend(ctx.accumulators[d.name].finalize(method=d.name, metric=d.metric) for d in dets)
        timings[task] = time.perf_counter() - t0
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    texts = ({task: [lm.tokenizer.decode(list(ids)) for ids in rows] for task, rows in inputs.items()}
             if lm.tokenizer is not None else {})  # the report shows each input as text next to its ids
    model_info = {**lm.model_info(), "pattern_source": pattern_source(lm)}  # how every pattern of this scan was made
    result = ScanResult(model=lm.name, model_info=model_info, config=config, detectors=detectors,
                        scores=scores, causal={}, inputs=inputs, probe_params=probe_params, timings=timings,
                        input_texts=texts, started_at=started,
                        notes=[f"probe {task!r} skipped: {why}" for task, why in not_applicable.items()])
    result.attn_examples = attention_examples(lm, sorted({h for d in detectors for h in head_ids(result.top(d.name, 3))}))
    if config.causal:
        t0 = time.perf_counter()
        outcome = run_causal_checks(lm, result, progress=progress)
        result.causal = outcome.checks
        result.scores = pd.concat([result.scores, outcome.scores], ignore_index=True)
        result.inputs.update(outcome.inputs)
        result.notes.extend(outcome.notes)
        timings["causal"] = time.perf_counter() - t0
    return result
