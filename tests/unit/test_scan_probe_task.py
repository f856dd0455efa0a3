"""A new probe task is one file: this module defines a task (builder, scan defaults, capture plan,
causal evaluation) and detectors that read it, and ``scan_model`` runs them on the shipped toy
model, causal check included, with no edit anywhere else in headmine."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from headmine.atlas import Atlas, write_job
from headmine.capture import CaptureRecord
from headmine.core.errors import TaskError
from headmine.core.ids import Site
from headmine.detectors import unregister as unregister_detector
from headmine.detectors.base import (
    BatchScores,
    CausalCheckSpec,
    Detector,
    empty_scores,
    n_layers_heads,
    register,
    require_site,
)
from headmine.models.loading import LoadedModel
from headmine.pipeline.scan import ScanConfig, scan_model
from headmine.tasks import (
    PROBES,
    CapturePlan,
    EvalBatch,
    Evaluation,
    ProbeTask,
    TokenBatch,
    register_probe,
    token_loss,
    token_pool,
)
from headmine.tasks.base import bos_prefix

TASK = "test_recall"
NAME = "test_last_row_recall"
UNCHECKED = "test_last_row_recall_unchecked"


# --------------------------------------------------------------------------- the task, in one file
def recall_prompts(tokenizer: Any, *, seed: int = 0, n: int = 4, seq_len: int = 16, prefix_len: int | None = None) -> TokenBatch:
    """BOS + r + r[:m] (r = ``seq_len`` distinct random tokens, m = ``prefix_len``, default half).

    Meta: ``source_pos`` [B], the position in the first copy of the token that follows the last one
    (where an induction head at the last row attends)."""
    m = seq_len // 2 if prefix_len is None else prefix_len
    pool = token_pool(tokenizer)
    g = torch.Generator().manual_seed(seed)
    prefix = bos_prefix(tokenizer, True)
    rows = [pool[torch.randperm(len(pool), generator=g)[:seq_len]].tolist() for _ in range(n)]
    ids = torch.tensor([prefix + r + r[:m] for r in rows], dtype=torch.long)
    return TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), task=TASK,
                      meta={"source_pos": torch.full((n,), len(prefix) + m, dtype=torch.long)},
                      params={"n": n, "seed": seed, "seq_len": seq_len, "prefix_len": m})


def recall_loss(tokenizer: Any, *, n: int, seed: int, seq_len: int = 16) -> EvalBatch:
    """The same prompts one token longer: the loss of the recalled token at the end (higher = worse)."""
    batch = recall_prompts(tokenizer, n=n, seed=seed, seq_len=seq_len, prefix_len=seq_len // 2 + 1)
    weight = torch.zeros_like(batch.input_ids)
    weight[:, -1] = 1
    return EvalBatch(batch=batch, measure=lambda logits: float(token_loss(logits, batch.input_ids, weight)))


PROBE = ProbeTask(
    name=TASK, build=recall_prompts, defaults={"n": 8, "seq_len": 16},
    plan=CapturePlan(query_rows="last"),  # only the last row's attention is captured
    evaluation=Evaluation(metric="loss_recalled_token", build=recall_loss, inherit=("seq_len",)),
)


# --------------------------------------------------------------------------- detectors reading it
QUERY_ROWS_SEEN: list[int] = []


def last_row_recall(record: CaptureRecord, meta: Mapping[str, Any], weights: Any = None) -> BatchScores:
    """Attention of the last row on ``source_pos``, per prompt."""
    patterns = require_site(record, Site.PATTERN, NAME)
    n_layers, n_heads = n_layers_heads(record, meta)
    src = torch.as_tensor(meta["source_pos"]).long()
    out = empty_scores(record.input_ids.shape[0], n_layers, n_heads)
    for layer, a in patterns.items():
        QUERY_ROWS_SEEN.append(int(a.shape[2]))
        last = a.detach().float()[:, :, -1, :]  # [batch, head, key]
        out[:, layer, record.heads[layer]] = last.gather(-1, src[:, None, None].expand(-1, last.shape[1], 1))[..., 0].double()
    return BatchScores(out)


DETECTOR = Detector(
    name=NAME, head_type="last-row recall head", stage="In-Context Identification", task=TASK,
    sites=frozenset({Site.PATTERN}), score=last_row_recall, threshold=0.3,
    causal=CausalCheckSpec(task=TASK), definition="attention of the last token on the token after its first copy",
)
UNCHECKED_DETECTOR = Detector(
    name=UNCHECKED, head_type="last-row recall head", stage="In-Context Identification", task=TASK,
    sites=frozenset({Site.PATTERN}), score=last_row_recall, threshold=0.3, causal=None,
)


@pytest.fixture
def registered() -> Iterator[None]:
    """Register the task and the detectors as their own files would, and forget them afterwards
    (the registries are process-wide: later default scans must not see test detectors)."""
    register_probe(PROBE)
    register(DETECTOR)
    register(UNCHECKED_DETECTOR)
    try:
        yield
    finally:
        PROBES.unregister(TASK)
        unregister_detector(NAME)
        unregister_detector(UNCHECKED)


# --------------------------------------------------------------------------- tests
def test_a_probe_task_defined_in_one_file_is_scanned_and_causally_checked(registered, toy: LoadedModel, tmp_path):
    QUERY_ROWS_SEEN.clear()
    cfg = ScanConfig(detectors=(NAME, UNCHECKED), top_k=2, n_random=3, causal_n=8, batch_size=4)
    res = scan_model(toy, cfg)
    assert res.probe_params[TASK] == {"n": 8, "seq_len": 16}  # the task's scan defaults
    assert QUERY_ROWS_SEEN and set(QUERY_ROWS_SEEN) == {1}  # the plan: one (last) query row per prompt
    assert len(res.inputs[TASK]) == 8
    # the toy's induction heads sit in layer 1 and recall the next token from the first copy
    top = res.top(NAME, 2)
    assert set(top.layer) == {1} and top.value.min() > 0.3
    check = res.causal[NAME]
    assert check.metric == "loss_recalled_token"
    assert check.topk_effect > 0  # ablating the recall heads makes the recalled token harder to predict
    assert len(res.inputs[f"causal:{TASK}"]) == 8
    assert UNCHECKED not in res.causal
    assert f"detector {UNCHECKED!r}: no causal check declared" in res.notes
    run_id = write_job(res, tmp_path / "atlas.db")
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        stored = db.scores(run_id=run_id)
    assert {NAME, UNCHECKED, f"causal:{NAME}"} <= set(stored.method)
    assert (stored.metric == "loss_recalled_token:topk_effect").any()


def test_a_check_on_a_task_without_evaluation_fails_before_any_forward(registered, toy: LoadedModel):
    plain = ProbeTask(name="test_no_evaluation", build=recall_prompts)
    bad = Detector(name="test_bad_check", head_type="last-row recall head", stage="In-Context Identification",
                   task=TASK, sites=frozenset({Site.PATTERN}), score=last_row_recall, threshold=0.3,
                   causal=CausalCheckSpec(task="test_no_evaluation"))
    register_probe(plain)
    register(bad)
    try:
        with pytest.raises(TaskError, match="has no evaluation"):
            scan_model(toy, ScanConfig(detectors=("test_bad_check",)))
    finally:
        PROBES.unregister("test_no_evaluation")
        unregister_detector("test_bad_check")
