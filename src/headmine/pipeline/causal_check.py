"""Causal confirmation of a scan: mean-ablate each detector's top-k heads vs k random heads.

Each detector declares its check (``Detector.causal``: a probe task with an evaluation, and the
expected sign of the effect); the task's ``Evaluation`` builds the batch and a metric where higher
is worse (next-token loss on the second repeat, on natural text, on successor positions, on the
needle's answer given the prompt; minus the IOI logit difference). A detector that declares no
check is named in the scan's notes. Ablation = mean ablation at z (mean over the evaluation batch's
real positions), through ``headmine.causal``. Random draws (``n_random`` sets of k heads, fixed
seed) come from the heads outside the top-k of EVERY detector checked on the same task (so a random
set is not secretly another candidate set, which matters in small models where half the heads are
specialised), and are shared by those detectors; when fewer than k such heads exist, each detector
draws from the heads outside its own top-k. Sink heads are also tested for dormancy: all of a
head's attention moved to the first token (z := v at position 0), KL to the clean run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal import Mean, PatchFrom, run_with_interventions
from headmine.causal.fast_sweep import PrefixCache, sweep_sets
from headmine.core.errors import TaskError
from headmine.core.ids import HeadId, Site
from headmine.core.tables import SCORE_COLUMNS, scores_frame
from headmine.detectors import Detector
from headmine.models.loading import LoadedModel
from headmine.pipeline.attention_examples import head_ids
from headmine.pipeline.results import (
    CAUSAL_SEED_OFFSET,
    DORMANT_METHOD,
    DORMANT_METRIC,
    CausalCheck,
    Progress,
    ScanResult,
)
from headmine.tasks import PROBES, Evaluation


@dataclass
class CausalOutcome:
    """The checks per detector, their score rows, the exact token ids of every evaluation batch
    (role ``causal:<task>``), and notes on detectors that were not checked."""

    checks: dict[str, CausalCheck] = field(default_factory=dict)
    scores: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SCORE_COLUMNS))
    inputs: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def evaluation_of(task: str) -> Evaluation:
    """The evaluation of a probe task (TaskError when it has none)."""
    evaluation = PROBES.get(task).evaluation
    if evaluation is None:
        raise TaskError(f"probe task {task!r} has no evaluation, so no causal check can run on it",
                        "give the task an Evaluation, or declare the detector's check on another task")
    return evaluation


def check_declared_tasks(detectors: list[Detector]) -> None:
    """TaskError before any forward pass when a detector's check names a task without an evaluation."""
    for d in detectors:
        if d.causal is not None:
            try:
                evaluation_of(d.causal.task)
            except TaskError as err:
                raise TaskError(f"detector {d.name!r}: {err.problem}", err.hint) from err


def _groups(result: ScanResult) -> tuple[dict[str, list[Detector]], list[str]]:
    """Detectors to check, grouped by their check's task (scan order), and notes on the others."""
    by_task: dict[str, list[Detector]] = {}
    notes: list[str] = []
    for d in result.detectors:
        if d.causal is None:
            notes.append(f"detector {d.name!r}: no causal check declared")
        elif result.detector_scores(d.name).value.isna().all():
            notes.append(f"detector {d.name!r}: causal check skipped (no head has a score)")
        else:
            by_task.setdefault(d.causal.task, []).append(d)
    return by_task, notes


def run_causal_checks(lm: LoadedModel, result: ScanResult, *, progress: Progress | None = None) -> CausalOutcome:
    """Check every detector that declares a check, one evaluation batch per task."""
    cfg = result.config
    all_heads = lm.geometry.heads()
    k = cfg.top_k or max(1, min(5, len(all_heads) // 8))
    by_task, notes = _groups(result)
    out = CausalOutcome(notes=notes)
    rows: list[dict[str, Any]] = []
    total = sum(len(v) + cfg.n_random + 1 for v in by_task.values())
    done = 0
    for task, dets in by_task.items():
        evaluation = evaluation_of(task)
        kwargs = evaluation.kwargs(cfg.causal_n, result.probe_params.get(task))
        try:
            ev = evaluation.build(lm.tokenizer, seed=cfg.seed + CAUSAL_SEED_OFFSET, **kwargs)
        except TaskError as err:  # e.g. too few single-token words in this tokenizer: no check, said so
            out.notes.extend(f"detector {d.name!r}: causal check skipped (its task {task!r} cannot be built "
                             f"for this model: {err.problem})" for d in dets)
            done += len(dets) + cfg.n_random + 1
            continue
        ids, mask = ev.batch.input_ids, ev.batch.attention_mask
        out.inputs[f"causal:{task}"] = [tuple(int(t) for t in r[m.bool()].tolist()) for r, m in zip(ids, mask, strict=True)]
        ref = run_capture(lm, CaptureSpec(sites=frozenset({Site.Z}), keep_logits=True), ids, mask)
        assert ref.logits is not None
        clean = ev.measure(ref.logits)
        values = Mean.from_record(ref, all_heads).values
        del ref

        def effects(sets: list[list[HeadId]], ids: torch.Tensor = ids, mask: torch.Tensor = mask, values: Any = values,
                    measure: Callable[[torch.Tensor], float] = ev.measure, clean: float = clean) -> list[float]:
            """Each set mean-ablated together (one staggered sweep for all sets): measure minus clean. The
            prefix cache keeps only the layers where a set starts, and lives only for this call."""
            cache = PrefixCache(lm, ids, mask, keep_layers={min(h.layer for h in s) for s in sets if s})
            return [m - clean for m in sweep_sets(cache, sets, lambda layer: values[layer], measure)]

        rng = random.Random(cfg.seed + 7)
        tops = {d.name: head_ids(result.top(d.name, k)) for d in dets}
        excluded = {h for hs in tops.values() for h in hs}
        pool = [h for h in all_heads if h not in excluded]
        # every set is drawn first, in the order the draws always had, then all are measured in one sweep
        shared_sets = [rng.sample(pool, k) for _ in range(cfg.n_random)] if len(pool) >= k else None
        own_sets: dict[str, list[list[HeadId]]] = {}
        for d in dets:
            if shared_sets is None:  # few heads: draw outside this detector's own top-k
                own = [h for h in all_heads if h not in tops[d.name]]
                own_sets[d.name] = [rng.sample(own, min(k, len(own))) for _ in range(cfg.n_random)]
        sets = list(shared_sets or []) + [s for d in dets for s in [*own_sets.get(d.name, []), tops[d.name]]]
        measured = iter(effects(sets))
        shared = [next(measured) for _ in shared_sets] if shared_sets is not None else None
        done += cfg.n_random + 1 + len(dets)
        if progress:
            progress("causal", done, total)
        for d in dets:
            assert d.causal is not None
            random_effects = shared if shared is not None else [next(measured) for _ in own_sets[d.name]]
            top_effect = next(measured)
            check = CausalCheck(detector=d.name, metric=evaluation.metric, heads=[str(h) for h in tops[d.name]],
                                k=len(tops[d.name]), clean=clean, topk_effect=top_effect,
                                random_effects=random_effects, expected_sign=d.causal.expected_sign)
            out.checks[d.name] = check
            rows.extend(check_rows(check, len(ev.batch)))
        for d in dets:
            if d.causal is not None and d.causal.dormant_below is not None:
                top = result.top(d.name, cfg.dormant_top)
                heads = [HeadId(int(r.layer), int(r.head)) for r in top.itertuples() if r.value > d.threshold]
                kl_rows = dormancy_rows(lm, heads, ids, mask)
                rows.extend(kl_rows)
                dormant = [HeadId(r["layer"], r["head"]) for r in kl_rows if r["value"] < d.causal.dormant_below]
                others = [h for h in all_heads if h not in excluded and h not in dormant]
                if dormant and len(others) >= len(dormant):
                    # no harm expected: ablating the dormant heads costs no more than as many random heads
                    draws = [rng.sample(others, len(dormant)) for _ in range(cfg.n_random)]
                    dormant_effect, *random_effects = effects([dormant, *draws])
                    check = CausalCheck(detector=DORMANT_METHOD, metric=evaluation.metric,
                                        heads=[str(h) for h in dormant], k=len(dormant), clean=clean,
                                        topk_effect=dormant_effect, random_effects=random_effects, expected_sign=0)
                    out.checks[DORMANT_METHOD] = check
                    rows.extend(check_rows(check, len(ev.batch)))
    if rows:
        out.scores = scores_frame(rows)
    return out


def check_rows(check: CausalCheck, n: int) -> list[dict[str, Any]]:
    """The score rows of one check (component "set", method ``causal:<detector>``)."""
    values = (("clean", check.clean), ("topk_effect", check.topk_effect), ("random_mean", check.random_mean),
              ("random_std", check.random_std), ("random_max", max(check.random_effects)),
              ("confirmed", float(check.confirmed)), ("k", float(check.k)))
    return [{"component": "set", "layer": -1, "head": -1, "method": f"causal:{check.detector}",
             "metric": f"{check.metric}:{name}" if name != "k" else "k", "value": value, "n": n}
            for name, value in values]


def dormancy_rows(lm: LoadedModel, heads: list[HeadId], ids: torch.Tensor, mask: torch.Tensor) -> list[dict[str, Any]]:
    """KL(clean || the head's attention moved to the first token) per head, as score rows
    (method ``dormant``, metric ``kl_move_to_first``): near 0 for a dormant head."""
    if not heads:
        return []
    g = lm.geometry
    layers = tuple(sorted({h.layer for h in heads}))
    ref = run_capture(lm, CaptureSpec(sites=frozenset({Site.V}), layers=layers, keep_logits=True), ids, mask)
    assert ref.logits is not None
    clean_lp = torch.log_softmax(ref.logits.float(), -1)
    m = mask.bool()
    out = []
    for h in heads:
        v0 = ref.v[h.layer][:, 0, g.kv_head_of(h.head)]  # [batch, d_head]
        src = torch.zeros(ids.shape[0], ids.shape[1], g.n_heads, g.d_head)
        src[:, :, h.head] = v0[:, None, :]
        logits = run_with_interventions(lm, ids, mask, [PatchFrom(heads=(h,), source={h.layer: src})])
        lp = torch.log_softmax(logits.float(), -1)
        kl = (clean_lp.exp() * (clean_lp - lp)).sum(-1)[m].mean()
        out.append({"component": "head", "layer": h.layer, "head": h.head, "method": DORMANT_METHOD,
                    "metric": DORMANT_METRIC, "value": float(kl), "n": int(m.sum())})
    return out
