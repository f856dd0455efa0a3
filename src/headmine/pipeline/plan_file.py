"""Batch plan files: a TOML list of models x jobs x settings, checked in full before any job runs.

A plan is what `headmine batch PLAN` runs. Every job is one existing pipeline entry point on one model,
and writes its runs to its own atlas shard (see ``headmine.pipeline.batch``).

```toml
description = "induction everywhere, IOI toolkit on SmolLM2"   # optional

[defaults]                    # optional: settings for every job (a job's own settings win)
device = "cpu"                # cpu | cuda | cuda:N | auto
dtype = "float32"             # float32 | bfloat16 | float16
n = 8                         # prompts (sequences) per task
seed = 0
max_retries = 1               # attempts after the first failure (`--max-retries` overrides)
resources = { num_cpus = 1, num_gpus = 0, memory = "4GiB" }   # one Ray task's request

[[matrix]]                    # every model x every job (several [[matrix]] tables may follow)
models = ["toy-induction", "smollm2"]
jobs = ["scan:induction,previous_token", "mine:quick"]
methods = ["ablation", "patching"]   # with tasks: every method x every task
tasks = ["ioi"]
budgets = ["quick"]           # each adds "mine:<budget>"
n = [8, 32]                   # n and seed may be lists here: every value is a job
causal = false                # any setting applies to this matrix's jobs

[[jobs]]                      # one job with its own settings
model = "smollm2"
job = "ablation:ioi"
n = 16
options = { mode = "mean" }   # the causal method's own options
resources = { num_gpus = 1, memory = "16GiB" }
```

Job strings (``job = ...``), and the settings each kind reads:

- ``scan`` or ``scan:DET[,DET...]``: the head detectors (``headmine scan``); n, seed, batch_size, causal, top_k.
- ``METHOD:TASK``: any registered causal method (ablation, patching, attribution, dla, logit_lens,
  path_patching, plugins; the CLI names ablate / patch / attribute / lens work too) on a task name or
  a JSONL file; n, seed, metric, options.
- ``gate:TASK``: causal head gating (``headmine gate``); n, seed, preset, seeds, updates (one number or
  three: per stage).
- ``factual``: factual recall (``headmine factual``); n (per relation), seed, shots, top_k, batch_size.
- ``mine:BUDGET``: the whole main job (``headmine mine``) at quick | standard | thorough.

Every job also takes device, dtype, resources and max_retries. A setting a kind does not read is an
error on a ``[[jobs]]`` entry and ignored when it comes from ``[defaults]`` or a matrix. Unknown keys,
models, detectors, methods, tasks, budgets and presets are :class:`InputError` s that name the file
and the key. Relative model and task paths are read from the plan file's folder.

Each job has a stable key: a hash of its model, job string and every setting that changes its result
(not its resources or retries). Its runs carry the key, so a plan run again skips the jobs already in
the atlas. Two jobs with the same key in one plan are an error.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from headmine.causal.head_gating.config import PRESETS
from headmine.causal.methods import METHODS
from headmine.causal.metrics import METRIC_KINDS
from headmine.core.errors import InputError
from headmine.detectors import DETECTORS
from headmine.models.loading import EMBEDDED
from headmine.models.placement import device_spec, dtype_name, parse_dtype
from headmine.pipeline.mine import BUDGETS
from headmine.tasks import TASKS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KINDS = ("scan", "method", "gate", "factual", "mine")
COMMON_SETTINGS = ("device", "dtype", "resources", "max_retries")
KIND_SETTINGS: dict[str, tuple[str, ...]] = {
    "scan": ("n", "seed", "batch_size", "causal", "top_k"),
    "method": ("n", "seed", "metric", "options"),
    "gate": ("n", "seed", "preset", "seeds", "updates"),
    "factual": ("n", "seed", "shots", "top_k", "batch_size"),
    "mine": (),
}
SETTINGS = (*COMMON_SETTINGS, *sorted({s for names in KIND_SETTINGS.values() for s in names}))
METHOD_ALIASES = {"ablate": "ablation", "patch": "patching", "attribute": "attribution", "lens": "logit_lens"}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


@dataclass(frozen=True)
class Resources:
    """What one job asks a Ray cluster for (ignored when the plan runs locally). ``memory`` in bytes."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None

    def ray_options(self) -> dict[str, Any]:
        """Keyword arguments for ``remote_fn.options(...)``."""
        out: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory is not None:
            out["memory"] = self.memory
        return out


@dataclass(frozen=True)
class Job:
    """One job of a plan: a pipeline entry point on one model, with everything it needs to run anywhere."""

    model: str
    spec: str  # normalised job string, e.g. "scan:induction", "ablation:ioi", "mine:quick"
    kind: str  # one of KINDS
    settings: dict[str, Any]  # only those the kind reads
    device: str = "cpu"
    dtype: str = "float32"
    resources: Resources = field(default_factory=Resources)
    max_retries: int = 0
    where: str = ""  # where in the plan file it came from (for messages)

    @property
    def target(self) -> str:
        """The part after ``:`` (detectors, task or budget); empty for ``scan`` and ``factual``."""
        return self.spec.partition(":")[2]

    @property
    def key(self) -> str:
        """A stable identity: the same job (model, job string, settings, device, dtype) has the same key."""
        ident = {"model": self.model, "job": self.spec, "settings": self.settings, "device": self.device,
                 "dtype": self.dtype}
        return "batch-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()) if k != "options")
        return f"{self.model} {self.spec}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class Plan:
    """A checked plan: its jobs in file order."""

    path: Path
    jobs: list[Job]
    description: str | None = None


class _Checker:
    """Validation with one message format: ``PLAN: WHERE: problem``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str, hint: str | None = None) -> InputError:
        return InputError(f"{self.path}: {where}: {problem}", hint)

    def keys(self, table: Any, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where, f"expected a table, got {type(table).__name__} {table!r}")
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}", f"unknown key {unknown[0]!r}", f"use {', '.join(allowed)}")
        return table

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(where, f"expected a non-empty list of names, got {value!r}")
        return [v.strip() for v in value]

    def local_path(self, text: str) -> Path | None:
        """``text`` as an existing path (relative to the plan's folder first), else None."""
        for p in (self.path.parent / Path(text).expanduser(), Path(text).expanduser()):
            if p.exists():
                return p.resolve()
        return None

    def model(self, name: Any, where: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise self.fail(where, f"a model name is needed, got {name!r}")
        name = name.strip()
        if name in EMBEDDED:
            return name
        local = self.local_path(name)
        if local is not None:
            return str(local)
        if name.count("/") == 1 and not name.startswith((".", "/", "~")):
            return name  # a hub id: checked when it loads
        raise self.fail(where, f"unknown model {name!r}",
                        f"use one of {', '.join(EMBEDDED)}, an existing model folder or .gguf file, or an id like org/model")

    def task(self, task: str, where: str) -> str:
        if task in TASKS:
            return task
        local = self.local_path(task)
        if local is not None and local.is_file():
            return str(local)
        raise self.fail(where, f"unknown task {task!r}", f"use one of {', '.join(TASKS.names())} or a .jsonl file")

    def job_spec(self, text: Any, where: str) -> tuple[str, str]:
        """``(kind, normalised job string)`` from ``scan:induction``, ``ablate:ioi``, ``mine:quick``..."""
        if not isinstance(text, str) or not text.strip():
            raise self.fail(where, f"a job string is needed (e.g. 'scan:induction'), got {text!r}")
        head, sep, rest = (part.strip() for part in text.strip().partition(":"))
        if head == "scan":
            names = [d.strip() for d in rest.split(",") if d.strip()] if sep else []
            unknown = [d for d in names if d not in DETECTORS]
            if unknown:
                raise self.fail(where, f"unknown detector {unknown[0]!r} in {text!r}", f"use {', '.join(DETECTORS.names())}")
            return "scan", "scan" + (":" + ",".join(names) if names else "")
        if head == "factual":
            if rest:
                raise self.fail(where, f"factual takes no target, got {text!r}", "write job = \"factual\"")
            return "factual", "factual"
        if head == "mine":
            if rest not in BUDGETS:
                raise self.fail(where, f"unknown mine budget {rest!r} in {text!r}", f"use mine:{' | mine:'.join(BUDGETS)}")
            return "mine", f"mine:{rest}"
        if not rest:
            raise self.fail(where, f"job {text!r} names no task", "write METHOD:TASK, e.g. ablation:ioi or gate:ioi")
        if head == "gate":
            return "gate", f"gate:{self.task(rest, where)}"
        method = METHOD_ALIASES.get(head, head)
        if method not in METHODS:
            raise self.fail(where, f"unknown job {head!r} in {text!r}",
                            f"use scan, factual, mine:BUDGET, gate:TASK or METHOD:TASK with a method in "
                            f"{', '.join(METHODS.names())}")
        return "method", f"{method}:{self.task(rest, where)}"

    def setting(self, key: str, value: Any, where: str) -> Any:
        """One setting, type-checked and normalised."""
        w = f"{where}.{key}"

        def integer(lo: int) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise self.fail(w, f"expected an integer >= {lo}, got {value!r}")
            return int(value)

        if key in ("device", "dtype"):  # the loader's own rules (the form only: the plan may be for other machines)
            if not isinstance(value, str):
                raise self.fail(w, f"unknown {key} {value!r}", "give it as a string")
            try:
                return device_spec(value) if key == "device" else dtype_name(parse_dtype(value))
            except InputError as err:
                raise self.fail(w, err.problem, err.hint) from None
        if key in ("n", "batch_size", "top_k", "seeds"):
            return integer(1)
        if key in ("seed", "max_retries", "shots"):
            return integer(0)
        if key == "updates":
            steps = value if isinstance(value, list) else [value]
            if len(steps) not in (1, 3) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in steps):
                raise self.fail(w, f"expected one or three integers >= 0, got {value!r}", "e.g. updates = [15, 25, 25]")
            return steps * 3 if len(steps) == 1 else steps
        if key == "causal":
            if not isinstance(value, bool):
                raise self.fail(w, f"expected true or false, got {value!r}")
            return value
        if key == "preset":
            if value not in PRESETS:
                raise self.fail(w, f"unknown CHG preset {value!r}", f"use {', '.join(PRESETS)}")
            return value
        if key == "metric":
            if value not in METRIC_KINDS:
                raise self.fail(w, f"unknown metric {value!r}", f"use {', '.join(METRIC_KINDS)}")
            return value
        if key == "options":
            if not isinstance(value, dict):
                raise self.fail(w, f"expected a table of method options, got {value!r}")
            return dict(value)
        if key == "resources":
            return self.resources(value, w)
        raise self.fail(w, f"unknown key {key!r}", f"use {', '.join(SETTINGS)}")

    def resources(self, value: Any, where: str) -> dict[str, Any]:
        table = self.keys(value, ("num_cpus", "num_gpus", "memory"), where)
        out: dict[str, Any] = {}
        for key in ("num_cpus", "num_gpus"):
            if key in table:
                v = table[key]
                if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (key == "num_cpus" and v == 0):
                    raise self.fail(f"{where}.{key}", f"expected a number {'> 0' if key == 'num_cpus' else '>= 0'}, got {v!r}")
                out[key] = float(v)
        if "memory" in table:
            out["memory"] = self.memory(table["memory"], f"{where}.memory")
        return out

    def memory(self, value: Any, where: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        m = _MEMORY.match(value) if isinstance(value, str) else None
        if m is None or float(m.group(1)) <= 0:
            raise self.fail(where, f"cannot read memory {value!r}", "give bytes, or a size like \"4GiB\" or \"512MB\"")
        unit = (m.group(2) or "").lower().removesuffix("b")
        return int(float(m.group(1)) * _UNITS[unit])

    def settings(self, table: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        return {k: self.setting(k, v, where) for k, v in table.items() if k not in skip}


def _method_options(check: _Checker, job: Job) -> None:
    """Build the method's config once, so an unknown option or bad value fails before anything runs."""
    method = METHODS.get(job.spec.partition(":")[0])
    options = job.settings.get("options", {})
    declared = {f.name for f in fields(method.config_cls)}
    bad = sorted(set(options) - declared)
    if bad:
        raise check.fail(f"{job.where}.options.{bad[0]}", f"method {method.name!r} has no option {bad[0]!r}",
                         f"its options: {', '.join(sorted(declared))}")
    try:
        method.config(task=job.target, **{k: v for k, v in job.settings.items() if k in ("n", "seed", "metric")},
                      **options)
    except (TypeError, ValueError) as err:
        raise check.fail(f"{job.where}.options", f"invalid options for {method.name}: {err}") from None


def _make_job(check: _Checker, model: str, text: Any, settings: dict[str, Any], where: str, *,
              strict: set[str]) -> Job:
    """A job from its model, job string and merged settings; ``strict`` settings must apply to the kind."""
    kind, spec = check.job_spec(text, f"{where}.job")
    reads = KIND_SETTINGS[kind]
    stray = sorted(k for k in strict if k not in reads and k not in COMMON_SETTINGS)
    if stray:
        raise check.fail(f"{where}.{stray[0]}", f"a {kind} job does not read {stray[0]!r}",
                         f"a {kind} job reads {', '.join((*reads, *COMMON_SETTINGS))}")
    job = Job(model=model, spec=spec, kind=kind, settings={k: v for k, v in settings.items() if k in reads},
              device=settings.get("device", "cpu"), dtype=settings.get("dtype", "float32"),
              resources=Resources(**settings.get("resources", {})), max_retries=settings.get("max_retries", 0),
              where=where)
    if kind == "method":
        _method_options(check, job)
    return job


def _merge_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {**base, **extra}
    if "resources" in base and "resources" in extra:
        out["resources"] = {**base["resources"], **extra["resources"]}
    return out


def _matrix_jobs(check: _Checker, table: Any, defaults: dict[str, Any], where: str) -> list[Job]:
    axes = ("models", "jobs", "methods", "tasks", "budgets")
    table = check.keys(table, (*axes, *SETTINGS), where)
    if "models" not in table:
        raise check.fail(where, "a matrix needs models = [...]")
    models = [check.model(m, f"{where}.models[{i}]") for i, m in enumerate(check.strings(table["models"], f"{where}.models"))]
    specs = check.strings(table["jobs"], f"{where}.jobs") if "jobs" in table else []
    if ("methods" in table) != ("tasks" in table):
        raise check.fail(where, "methods and tasks go together (every method x every task)")
    if "methods" in table:
        specs += [f"{m}:{t}" for m in check.strings(table["methods"], f"{where}.methods")
                  for t in check.strings(table["tasks"], f"{where}.tasks")]
    specs += [f"mine:{b}" for b in (check.strings(table["budgets"], f"{where}.budgets") if "budgets" in table else [])]
    if not specs:
        raise check.fail(where, "a matrix needs jobs, methods + tasks, or budgets")
    sweeps = {k: table[k] for k in ("n", "seed") if isinstance(table.get(k), list)}
    own = check.settings(table, where, skip=(*axes, *sweeps))
    values: list[dict[str, Any]] = [{}]
    for key, options in sweeps.items():
        if not options:
            raise check.fail(f"{where}.{key}", "an empty list")
        values = [{**v, key: check.setting(key, o, where)} for v in values for o in options]
    out: dict[str, Job] = {}  # a kind that does not read a swept setting gives one job, not one per value
    for model in models:
        for spec in specs:
            for v in values:
                job = _make_job(check, model, spec, _merge_settings(defaults, {**own, **v}),
                                f"{where} ({model} x {spec})", strict=set())
                out.setdefault(job.key, job)
    return list(out.values())


def parse_plan(text: str, path: str | Path = "plan.toml") -> Plan:
    """A checked :class:`Plan` from TOML ``text``; every problem is an InputError naming ``path`` and the key."""
    check = _Checker(Path(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML: {err}", "check the syntax (strings in quotes, [[jobs]] tables)") from None
    check.keys(data, ("description", "defaults", "matrix", "jobs"), "plan")
    defaults = check.settings(check.keys(data.get("defaults", {}), SETTINGS, "[defaults]"), "[defaults]")
    jobs: list[Job] = []
    matrices = data.get("matrix", [])
    for i, table in enumerate(matrices if isinstance(matrices, list) else [matrices]):
        jobs += _matrix_jobs(check, table, defaults, f"[[matrix]] #{i + 1}" if isinstance(matrices, list) else "[matrix]")
    entries = data.get("jobs", [])
    if not isinstance(entries, list):
        raise check.fail("jobs", "write each job as a [[jobs]] table")
    for i, entry in enumerate(entries):
        where = f"[[jobs]] #{i + 1}"
        entry = check.keys(entry, ("model", "job", *SETTINGS), where)
        if "job" not in entry:
            raise check.fail(where, "a job needs job = \"...\" (e.g. \"scan:induction\")")
        model = check.model(entry.get("model"), f"{where}.model")
        own = check.settings(entry, where, skip=("model", "job"))
        jobs.append(_make_job(check, model, entry["job"], _merge_settings(defaults, own), where, strict=set(own)))
    if not jobs:
        raise check.fail("plan", "no jobs", "add a [[matrix]] or [[jobs]] table")
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.key in seen:
            raise check.fail(job.where, f"the same job as {seen[job.key].where} ({job.label})",
                             "remove one of them, or give them different settings")
        seen[job.key] = job
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise check.fail("description", f"expected a string, got {description!r}")
    return Plan(path=Path(path), jobs=jobs, description=description)


def load_plan(path: str | Path) -> Plan:
    """Read and check the plan file at ``path`` (see the module docstring for the format)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"no plan file at {p}", "give the path of a .toml plan (see `headmine batch --help`)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the plan {p}: {err}", "check the file's permissions and encoding") from None
    return parse_plan(text, p)
