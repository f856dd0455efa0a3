"""One batch job: load its model, run the existing pipeline entry point, write its runs to its own shard.

The job unit of ``headmine batch`` (see ``headmine.pipeline.plan_file`` for the plan format): a scan
(``scan_model``), a causal method (``run_causal``), causal head gating (``gate_model``), factual recall
(``run_factual``) or the main job (``mine``), each written with the one atlas writer (``write_job``)
into a shard atlas that holds this job's runs only. Every run carries the job's key (``runs.key``), so
a merged atlas knows which jobs it holds. A ``mine`` job writes several runs under the group id = key
and keys them only once all of them are written: a job that failed halfway is never taken as done
(run again into the same shard, as a local retry does, it resumes at its first missing stage; on Ray
each attempt starts from an empty shard on its worker).

:func:`execute_job` never raises for a failing job: the outcome carries the error, so a batch runner
(local or Ray) can report it, retry it and go on with the others. :func:`ray_job` is the same unit as
a Ray task body: it writes the shard on the worker's disk and returns the file's bytes, so the driver
needs no storage shared with the workers.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from headmine.atlas import Atlas, JobResult, write_job
from headmine.atlas.merge import shard_bytes
from headmine.causal.head_gating import CHGConfig, task_data
from headmine.causal.methods import get_method
from headmine.core.errors import HeadmineError
from headmine.models.loading import LoadedModel, load_model
from headmine.pipeline.causal import run_causal
from headmine.pipeline.factual import FactualConfig, run_factual
from headmine.pipeline.gating import gate_model
from headmine.pipeline.mine import mine
from headmine.pipeline.plan_file import Job
from headmine.pipeline.results import ScanConfig, probe_sizes
from headmine.pipeline.scan import scan_model


@dataclass(frozen=True)
class JobOutcome:
    """How one attempt at a job went. ``error`` is set when it failed (and ``runs`` is 0)."""

    key: str
    runs: int = 0
    load_s: float = 0.0
    run_s: float = 0.0
    error: str | None = None
    worker: str = ""
    shard: bytes | None = None  # the shard file, when the job ran on a Ray worker

    @property
    def ok(self) -> bool:
        return self.error is None


class ModelCache:
    """Keeps the last loaded model, so consecutive jobs on one model load it once (one model in memory)."""

    def __init__(self) -> None:
        self._key: tuple[str, str, str] | None = None
        self._lm: LoadedModel | None = None

    def get(self, job: Job) -> tuple[LoadedModel, float]:
        """The job's model and the seconds spent loading it (0 when it was already loaded)."""
        key = (job.model, job.device, job.dtype)
        if self._key == key and self._lm is not None:
            return self._lm, 0.0
        self._key, self._lm = None, None  # free the previous model before loading the next
        start = time.perf_counter()
        lm = load_model(job.model, device=job.device, dtype=getattr(torch, job.dtype))
        self._key, self._lm = key, lm
        return lm, time.perf_counter() - start


def job_result(lm: LoadedModel, job: Job) -> JobResult:
    """Run a single-run job (every kind but ``mine``) through its pipeline entry point; nothing is written."""
    s = job.settings
    if job.kind == "scan":
        detectors = tuple(job.target.split(",")) if job.target else None
        config = ScanConfig(detectors=detectors, probe_params=probe_sizes(s.get("n")),
                            **{k: s[k] for k in ("seed", "batch_size", "causal", "top_k") if k in s})
        return scan_model(lm, config)
    if job.kind == "method":
        method, _, task = job.spec.partition(":")
        options = {k: s[k] for k in ("n", "seed", "metric") if k in s}
        return run_causal(lm, get_method(method).config(task=task, **options, **s.get("options", {})), method=method)
    if job.kind == "gate":
        data, prompts = task_data(lm, job.target, n=s.get("n", 8), seed=s.get("seed", 0))
        updates = tuple(s["updates"]) if "updates" in s else None
        config = CHGConfig.preset_for(s.get("preset", "quick"), seeds=s.get("seeds"), updates=updates)
        return gate_model(lm, data, config, task=job.target, prompts=prompts)
    if job.kind == "factual":
        names = {"n": "n_per_relation", "seed": "seed", "shots": "shots", "top_k": "top_k", "batch_size": "batch_size"}
        return run_factual(lm, FactualConfig(**{names[k]: v for k, v in s.items()}))
    raise ValueError(f"job kind {job.kind!r} has no single-run entry point")


def run_job(lm: LoadedModel, job: Job, shard: str | os.PathLike[str]) -> int:
    """Run ``job`` on the loaded model and write its runs (keyed by the job) into ``shard``; return how many."""
    if job.kind == "mine":
        mine(lm, shard, budget=job.target, group_id=job.key)
        with Atlas.open(shard) as db:
            return db.tag_group(job.key, job.key)
    run = job_result(lm, job).to_atlas()
    write_job(replace(run, record=replace(run.record, key=job.key)), shard)
    return 1


def _describe(err: BaseException) -> str:
    if isinstance(err, HeadmineError):
        return err.problem + (f" (what to do: {err.hint})" if err.hint else "")
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(err).__name__}: {err}{where} (a bug: please report it)"


def execute_job(job: Job, shard: str | os.PathLike[str], *, models: ModelCache | None = None) -> JobOutcome:
    """One attempt at ``job`` into ``shard``: the outcome, with the error when it failed (never raises,
    except on KeyboardInterrupt)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    load_s = 0.0
    try:
        lm, load_s = (models or ModelCache()).get(job)
        start = time.perf_counter()
        runs = run_job(lm, job, shard)
        return JobOutcome(key=job.key, runs=runs, load_s=load_s, run_s=time.perf_counter() - start, worker=worker)
    except Exception as err:
        return JobOutcome(key=job.key, load_s=load_s, error=_describe(err), worker=worker)


def ray_job(job: Job) -> JobOutcome:
    """The body of one Ray task: the job into a shard on the worker's disk, returned as bytes."""
    torch.set_num_threads(max(1, int(job.resources.num_cpus)))
    with tempfile.TemporaryDirectory(prefix="headmine-shard-") as tmp:
        path = Path(tmp) / f"{job.key}.db"
        outcome = execute_job(job, path)
        if not outcome.ok:
            return outcome
        try:
            return replace(outcome, shard=shard_bytes(path))
        except HeadmineError as err:
            return replace(outcome, runs=0, error=_describe(err))

