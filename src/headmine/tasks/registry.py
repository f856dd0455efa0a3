"""The two task registries and the loaders that read them.

- ``TASKS``: causal tasks, name -> ``builder(tokenizer, *, n, seed, **params) -> PromptSet``
  (clean and corrupted prompts plus a metric); ``load_task`` also reads a user JSONL file.
- ``PROBES``: probe tasks, name -> ``ProbeTask`` (a batch builder, scan defaults, a capture plan
  and an optional causal evaluation); ``load_probe`` builds one batch.

Every task registers itself in its own module (``@TASKS.register(...)``, ``register_probe(...)``);
a third-party package does the same from a module named by a ``headmine.tasks`` entry point, which
both registries import the first time they are looked up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from headmine.core.errors import InputError, TaskError
from headmine.core.registry import Registry
from headmine.tasks.base import TokenBatch
from headmine.tasks.jsonl import load_jsonl_task
from headmine.tasks.probe import ProbeTask
from headmine.tasks.prompt_set import PromptSet

TaskBuilder = Callable[..., PromptSet]

#: causal tasks: name -> builder(tokenizer, *, n, seed, **params) -> PromptSet
TASKS: Registry[TaskBuilder] = Registry("task", unknown_error=TaskError, plugin_group="headmine.tasks")
#: probe tasks for head detectors: name -> ProbeTask
PROBES: Registry[ProbeTask] = Registry("probe task", unknown_error=TaskError, plugin_group="headmine.tasks")


def register_probe(task: ProbeTask) -> ProbeTask:
    """Register a probe task under its name and return it."""
    PROBES.register(task.name)(task)
    return task


def get_probe(name: str) -> ProbeTask:
    """The probe task called ``name`` (TaskError listing the known names otherwise)."""
    return PROBES.get(name)


def load_task(name_or_path: str | Path, tokenizer: Any, **kw: Any) -> PromptSet:
    """A causal task by registered name (ioi, factual, successor, arithmetic, agreement, induction)
    or a path to a JSONL file; keyword arguments go to the builder."""
    name = str(name_or_path)
    if name in TASKS:
        return TASKS.get(name)(tokenizer, **kw)
    p = Path(name)
    if p.suffix in (".jsonl", ".json") or p.exists():
        if not p.exists():
            raise InputError(f"task file {p} does not exist", "check the path")
        return load_jsonl_task(p, tokenizer, **kw)
    raise TaskError(f"unknown task {name!r}", f"use one of {', '.join(TASKS.names())} or a path to a .jsonl file")


def load_probe(name: str, tokenizer: Any, **kw: Any) -> TokenBatch:
    """A probe batch by registered name (repeated_tokens, natural_text, ordinal, needle, ioi, ...),
    built with the builder's own defaults overridden by ``kw``."""
    return PROBES.get(name)(tokenizer, **kw)
