"""`headmine batch`: run a plan's jobs (locally or on Ray), retry failures, merge the shards into one atlas.

```python
from headmine.pipeline.batch import run_batch
from headmine.pipeline.plan_file import load_plan
result = run_batch(load_plan("plan.toml"), "atlas.db", "shards/")             # one after another, here
result = run_batch(load_plan("plan.toml"), "atlas.db", "shards/", ray="auto")  # as Ray tasks
result.failed, result.merge.added
```

What happens, in order:

1. Jobs whose key is already in the atlas are skipped (a plan run again does only what is missing);
   a job whose shard already holds its runs (a batch stopped before its merge) is not run again.
2. The other jobs run. Locally they run one after another in this process (consecutive jobs on one
   model load it once). With ``ray`` each job is a Ray task with the job's resource request; results
   are taken as they finish (``ray.wait``). Either way a failed job is reported with its error and
   tried again up to its ``max_retries`` (our retries, counted in ``attempts``; Ray's own retries are
   off); the other jobs go on.
3. The shards of the jobs that succeeded are merged into the atlas (``headmine.atlas.merge``); a job
   that failed for good merges nothing.

``on_event`` receives a :class:`BatchEvent` for every start, skip, success, retry and final failure:
the CLI prints one line per job and draws the overall bar from them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headmine.atlas import Atlas
from headmine.atlas.merge import MergeReport, merge_shards
from headmine.core.errors import AtlasError, InputError
from headmine.pipeline.batch_job import JobOutcome, ModelCache, execute_job, ray_job
from headmine.pipeline.plan_file import Job, Plan

#: event statuses: started (an attempt begins), skipped (already in the atlas), cached (its shard holds it),
#: done, retry (failed, will be tried again), failed (failed for good)
STATUSES = ("started", "skipped", "cached", "done", "retry", "failed")


@dataclass
class JobReport:
    """One job's story in a batch: final status, attempts and every attempt's error."""

    job: Job
    status: str = "pending"
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    runs: int = 0
    load_s: float = 0.0
    run_s: float = 0.0
    worker: str = ""

    @property
    def shard_name(self) -> str:
        return f"{self.job.key}.db"


@dataclass(frozen=True)
class BatchEvent:
    """Something that happened to one job: ``status`` is one of :data:`STATUSES`."""

    report: JobReport
    status: str
    message: str = ""


@dataclass
class BatchResult:
    """What a batch did: a report per job (plan order), the merge, and where it ran."""

    atlas: Path
    shards: Path
    jobs: list[JobReport]
    merge: MergeReport | None = None
    backend: str = "local"
    startup_s: float = 0.0  # Ray start-up or connection time (0 locally)
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobReport]:
        return [r for r in self.jobs if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


EventSink = Callable[[BatchEvent], None]


def _shard_has(shard: Path, key: str) -> bool:
    if not shard.is_file():
        return False
    try:
        with Atlas.open(shard, readonly=True, create=False) as db:
            return db.find_run(key=key) is not None
    except AtlasError:
        return False  # a damaged or foreign file: the job runs again and reports what is wrong with it


def _atlas_keys(atlas: Path, keys: list[str]) -> set[str]:
    with Atlas.open(atlas) as db:  # created here, so a bad atlas path fails before any job runs
        return {k for k in keys if db.find_run(key=k) is not None}


def record_attempt(report: JobReport, outcome: JobOutcome, retries: int, emit: EventSink) -> bool:
    """Count an attempt's outcome in its report and emit done / retry / failed; True when it may be retried."""
    report.attempts += 1
    report.load_s += outcome.load_s
    report.run_s += outcome.run_s
    report.worker = outcome.worker
    if outcome.ok:
        report.status, report.runs = "done", outcome.runs
        emit(BatchEvent(report, "done"))
        return False
    report.errors.append(outcome.error or "unknown error")
    if report.attempts <= retries:
        emit(BatchEvent(report, "retry", outcome.error or ""))
        return True
    report.status = "failed"
    emit(BatchEvent(report, "failed", outcome.error or ""))
    return False


def _run_local(reports: list[JobReport], shards: Path, retries: dict[str, int], emit: EventSink) -> None:
    models = ModelCache()
    first: dict[str, int] = {}
    for i, r in enumerate(reports):
        first.setdefault(r.job.model, i)
    # grouped by model (plan order within), so each model loads once
    for report in sorted(reports, key=lambda r: first[r.job.model]):
        again = True
        while again:
            emit(BatchEvent(report, "started", f"attempt {report.attempts + 1}"))
            outcome = execute_job(report.job, shards / report.shard_name, models=models)
            again = record_attempt(report, outcome, retries[report.job.key], emit)


def _write_shard(path: Path, data: bytes) -> None:
    """Put a shard that came back from a worker in place (atomically; stale WAL files of an earlier try removed)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        extra.unlink(missing_ok=True)
    os.replace(tmp, path)


def _infeasible(job: Job, total: dict[str, float]) -> str | None:
    """Why the cluster can never run ``job`` (a request above its total resources), or None."""
    asks = {"CPU": job.resources.num_cpus, "GPU": job.resources.num_gpus, "memory": job.resources.memory or 0}
    for name, amount in asks.items():
        if amount and amount > total.get(name, 0.0):
            have = total.get(name, 0.0)
            unit = " bytes" if name == "memory" else ""
            return (f"the job asks for {amount:g}{unit} {name} but the whole Ray cluster has {have:g}{unit} "
                    f"(it would wait forever)")
    return None


def import_ray() -> Any:
    """The ``ray`` module, imported only when a batch asks for it; a clear error naming the extra when missing."""
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed, so the plan cannot run on a Ray cluster",
                         'pip install "headmine[ray]" (or run without --ray, one job after another here)') from None
    return ray


def run_on_ray(todo: list[JobReport], shards: Path, address: str, retries: dict[str, int], emit: EventSink) -> float:
    """Run ``todo`` as Ray tasks (see :func:`run_batch`); return the seconds Ray took to start or connect."""
    ray = import_ray()
    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise InputError(f"cannot reach the Ray cluster {address!r}: {err}",
                             "start one with `ray start --head`, or pass --ray auto to start a local one") from None
    startup = time.perf_counter() - start
    try:
        remote = ray.remote(max_retries=0, retry_exceptions=False)(ray_job)
        total = {k: float(v) for k, v in ray.cluster_resources().items()}
        pending: dict[object, JobReport] = {}

        def submit(report: JobReport) -> None:
            why = _infeasible(report.job, total)
            if why is not None:
                report.attempts, report.status = report.attempts + 1, "failed"
                report.errors.append(why)
                emit(BatchEvent(report, "failed", why))
                return
            emit(BatchEvent(report, "started", f"submitted (attempt {report.attempts + 1})"))
            options = {**report.job.resources.ray_options(), "name": f"headmine {report.job.spec}"}
            pending[remote.options(**options).remote(report.job)] = report

        for report in todo:
            submit(report)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            report = pending.pop(ready[0])
            try:
                outcome: JobOutcome = ray.get(ready[0])
            except ray.exceptions.RayError as err:  # the worker died (out of memory, killed node...)
                outcome = JobOutcome(key=report.job.key, error=f"the Ray task failed: {type(err).__name__}: {err}")
            if outcome.ok and outcome.shard is not None:
                _write_shard(shards / report.shard_name, outcome.shard)
            if record_attempt(report, outcome, retries[report.job.key], emit):
                submit(report)
    finally:
        if started_here:
            ray.shutdown()
    return startup


def run_batch(
    plan: Plan,
    atlas: str | os.PathLike[str],
    shards: str | os.PathLike[str],
    *,
    ray: str | None = None,
    max_retries: int | None = None,
    on_event: EventSink | None = None,
) -> BatchResult:
    """Run ``plan`` into ``atlas`` with one shard per job under ``shards`` (see the module docstring).

    ``ray``: None runs locally; ``"auto"`` uses the Ray session already started in this process, else
    the cluster Ray finds (a running local one, or a new local one); any other value is a cluster
    address. ``max_retries`` overrides every job's own. Raises only for problems before the jobs
    (atlas path, Ray missing or unreachable) and for a failed merge; a failing job is in the result.
    """
    start = time.perf_counter()
    if max_retries is not None and max_retries < 0:
        raise InputError(f"max_retries must be >= 0, got {max_retries}")
    if ray is not None:
        import_ray()  # before anything is created
    atlas_path, shard_dir = Path(atlas).expanduser(), Path(shards).expanduser()
    if not atlas_path.parent.is_dir():
        raise AtlasError(f"cannot create the atlas {atlas_path}: folder {atlas_path.parent} does not exist",
                         "create the folder first or choose another --atlas")
    shard_dir.mkdir(parents=True, exist_ok=True)
    emit = on_event or (lambda event: None)
    reports = [JobReport(job) for job in plan.jobs]
    present = _atlas_keys(atlas_path, [r.job.key for r in reports])
    todo: list[JobReport] = []
    for report in reports:
        if report.job.key in present:
            report.status = "skipped"
            emit(BatchEvent(report, "skipped", "already in the atlas"))
        elif _shard_has(shard_dir / report.shard_name, report.job.key):
            report.status = "cached"
            emit(BatchEvent(report, "cached", "its shard holds it (an earlier batch stopped before merging)"))
        else:
            todo.append(report)
    retries = {r.job.key: r.job.max_retries if max_retries is None else max_retries for r in reports}
    result = BatchResult(atlas=atlas_path, shards=shard_dir, jobs=reports, backend="local" if ray is None else "ray")
    if todo and ray is None:
        _run_local(todo, shard_dir, retries, emit)
    elif todo:
        result.startup_s = run_on_ray(todo, shard_dir, ray, retries, emit)
    merged = [shard_dir / r.shard_name for r in reports if r.status in ("done", "cached")]
    if merged:
        result.merge = merge_shards(merged, atlas_path)
    result.seconds = time.perf_counter() - start
    return result
