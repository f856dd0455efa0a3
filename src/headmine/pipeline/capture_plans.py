"""A probe task's capture plan (plain data in ``headmine.tasks``) turned into capture passes.

``capture_spec`` builds the ``CaptureSpec`` of a plan; ``run_plan`` runs the one pass a plan asks
for and feeds every record to the detectors reading the task:

- ``plain_pass``: one forward per batch (only one batch of activations is ever alive). When every
  detector of the pass reads patterns only, each layer's pattern is scored as soon as it is computed
  and dropped (one layer alive, not all); on sequences longer than ``MAX_QUERY_ROWS`` an all-rows
  plan scores ``MAX_QUERY_ROWS`` evenly spaced query rows (the last one included): the detectors'
  means over query rows become means over those rows, and the stored rows grow linearly with the
  context instead of quadratically (with the SDPA recompute, so does the whole capture);
- ``per_row_query_pass``: one query row per prompt, its position read from the batch metadata
  (IOI's END row);
- ``decoding_pass``: greedy decoding, each step capturing the newest row; a prompt's per-step
  scores are summed and kept only when the plan's success rule holds for what the model generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from headmine.capture import CaptureRecord, CaptureSpec, capture_reduce, run_capture, stream_pattern_layers
from headmine.core.ids import Site
from headmine.detectors import BatchScores, Detector, ScoreAccumulator
from headmine.detectors.base import empty_scores
from headmine.detectors.weights import CircuitWeights
from headmine.models.loading import LoadedModel
from headmine.pipeline.results import Progress
from headmine.tasks import CapturePlan, TokenBatch

WIDE_BATCH = 512
"""Rows per forward for plans whose rows are one or two tokens long (``CapturePlan.wide``)."""

MAX_QUERY_ROWS = 512
"""Query rows an all-rows plan scores per sequence: every row up to this length, evenly spaced rows
beyond it (every default probe is shorter; long-context probes are not)."""


def sampled_query_rows(n_tokens: int, max_rows: int | None = None) -> tuple[int, ...] | None:
    """None (every row) for sequences of at most ``max_rows`` (default ``MAX_QUERY_ROWS``) tokens, else
    ``max_rows`` evenly spaced positions from 0 to the last one."""
    max_rows = MAX_QUERY_ROWS if max_rows is None else max_rows
    if n_tokens <= max_rows:
        return None
    return tuple(torch.linspace(0, n_tokens - 1, max_rows).round().long().unique().tolist())


def capture_spec(plan: CapturePlan, sites: Iterable[Site]) -> CaptureSpec:
    """The CaptureSpec of a plan for the union of its detectors' ``sites``.

    A per-row query plan gets its positions per batch (``per_row_query_pass``); "first_output"
    captures layer index 1 (the residual stream entering layer 1 = the output of block 0; for a
    one-layer model that index is the last layer's output, the same thing)."""
    return CaptureSpec(
        sites=frozenset(sites),
        layers=(1,) if plan.layers == "first_output" else None,
        query_positions="last" if plan.query_rows == "last" else None,
        keep_logits=plan.decoding is not None,
    )


def batch_size_for(plan: CapturePlan, batch_size: int) -> int:
    """Sequences per forward: at least ``WIDE_BATCH`` for wide plans."""
    return max(batch_size, WIDE_BATCH) if plan.wide else batch_size


def decoding_steps(plan: CapturePlan, max_new_tokens: int) -> int:
    """Greedy decoding steps of a decoding plan (0 otherwise): its own, else the scan's."""
    if plan.decoding is None:
        return 0
    return plan.decoding.max_new_tokens or max_new_tokens


@dataclass
class PassContext:
    """What every pass needs besides its records: the detectors of one task, their accumulators,
    the weights they read, metadata added to every batch (geometry), and progress reporting."""

    lm: LoadedModel
    detectors: list[Detector]
    accumulators: dict[str, ScoreAccumulator]
    weights: CircuitWeights | None
    base_meta: dict[str, Any]
    stage: str
    progress: Progress | None = None

    def score(self, record: CaptureRecord, meta: Mapping[str, Any]) -> int:
        """Add every detector's scores of ``record`` and return the number of sequences."""
        for d in self.detectors:
            self.accumulators[d.name].add(d.score(record, meta, self.weights))
        return int(record.input_ids.shape[0])

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(self.stage, done, total)


def _merge_layers(parts: list[tuple[int, BatchScores]]) -> BatchScores:
    """One BatchScores from per-layer ones: layer l's cells from the part scored on layer l alone."""
    values = parts[0][1].values.clone()
    mass = None if parts[0][1].non_first_mass is None else parts[0][1].non_first_mass.clone()
    for layer, part in parts:
        values[:, layer] = part.values[:, layer]
        if mass is not None and part.non_first_mass is not None:
            mass[:, layer] = part.non_first_mass[:, layer]
    return BatchScores(values, non_first_mass=mass)


def _layer_streamed_capture(ctx: PassContext, spec: CaptureSpec, ids: torch.Tensor, mask: torch.Tensor,
                            meta: Mapping[str, Any]) -> int:
    """One forward; each layer's pattern is scored by every detector as it is produced, then dropped."""
    parts: dict[str, list[tuple[int, BatchScores]]] = {d.name: [] for d in ctx.detectors}

    def score_layer(layer: int, record: CaptureRecord) -> None:
        for d in ctx.detectors:
            parts[d.name].append((layer, d.score(record, meta, ctx.weights)))

    stream_pattern_layers(ctx.lm, spec, ids, mask, score_layer)
    for d in ctx.detectors:
        ctx.accumulators[d.name].add(_merge_layers(parts[d.name]))
    return int(ids.shape[0])


def plain_pass(ctx: PassContext, spec: CaptureSpec, probe: TokenBatch, batch_size: int) -> None:
    """One forward per batch of ``batch_size`` sequences, reduced on the fly (layer by layer when the
    detectors read patterns only); long sequences score ``MAX_QUERY_ROWS`` evenly spaced rows."""
    if spec.query_positions is None:
        spec = replace(spec, query_positions=sampled_query_rows(int(probe.input_ids.shape[1])))
    done = 0
    if spec.sites == {Site.PATTERN} and not spec.keep_logits:
        for sub in probe.split(batch_size):
            done += _layer_streamed_capture(ctx, spec, sub.input_ids, sub.attention_mask, {**sub.meta, **ctx.base_meta})
            ctx.report(done, len(probe))
        return
    metas: list[dict[str, Any]] = []

    def pairs() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for sub in probe.split(batch_size):
            metas.append({**sub.meta, **ctx.base_meta})
            yield sub.input_ids, sub.attention_mask

    for n_done in capture_reduce(ctx.lm, spec, pairs(), lambda record: ctx.score(record, metas[-1])):
        done += n_done
        ctx.report(done, len(probe))


def per_row_query_pass(ctx: PassContext, spec: CaptureSpec, probe: TokenBatch, batch_size: int, key: str) -> None:
    """Only the query row at ``meta[key]`` of each prompt (the last real token where the batch lacks it)."""
    done = 0
    for sub in probe.split(batch_size):
        meta = {**sub.meta, **ctx.base_meta}
        meta.setdefault(key, sub.last_positions)
        rows = torch.as_tensor(meta[key]).long()
        record = run_capture(ctx.lm, replace(spec, query_positions=rows), sub.input_ids, sub.attention_mask)
        done += ctx.score(record, meta)
        del record
        ctx.report(done, len(probe))


def decoding_pass(ctx: PassContext, spec: CaptureSpec, probe: TokenBatch, plan: CapturePlan, steps: int) -> None:
    """Greedy decoding per prompt; each step is scored with ``generated`` (the token it produced) in
    the metadata. A prompt's summed scores count when ``plan.decoding.success`` holds; when none
    does, every cell is NaN (the scores are undefined)."""
    assert plan.decoding is not None
    n = len(probe)
    for i in range(n):
        row = probe.select([i])
        ids = row.input_ids[:, : int(row.lengths[0])]
        row_meta = {**row.meta, **ctx.base_meta}
        summed: dict[str, torch.Tensor] = {}
        generated: list[int] = []
        for _ in range(steps):
            record = run_capture(ctx.lm, spec, ids, torch.ones_like(ids))
            assert record.logits is not None
            nxt = int(record.logits[0, -1].argmax())
            meta = {**row_meta, "generated": torch.tensor([nxt])}
            for d in ctx.detectors:
                v = d.score(record, meta, ctx.weights).values
                summed[d.name] = v if d.name not in summed else summed[d.name] + v
            generated.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            del record
        if summed and plan.decoding.success(row.meta, generated):
            for d in ctx.detectors:
                ctx.accumulators[d.name].add(BatchScores(summed[d.name]))
        ctx.report(i + 1, n)
    for d in ctx.detectors:
        if ctx.accumulators[d.name].sum is None:
            ctx.accumulators[d.name].add(
                BatchScores(empty_scores(1, ctx.base_meta["n_layers"], ctx.base_meta["n_heads"])))


def run_plan(ctx: PassContext, plan: CapturePlan, probe: TokenBatch, *, batch_size: int, max_new_tokens: int) -> None:
    """Run the pass ``plan`` asks for over ``probe``, scoring every record with ``ctx``'s detectors."""
    spec = capture_spec(plan, set().union(*(d.sites for d in ctx.detectors)))
    if plan.decoding is not None:
        decoding_pass(ctx, spec, probe, plan, decoding_steps(plan, max_new_tokens))
    elif plan.query_key is not None:
        per_row_query_pass(ctx, spec, probe, batch_size_for(plan, batch_size), plan.query_key)
    else:
        plain_pass(ctx, spec, probe, batch_size_for(plan, batch_size))
