"""Prompt datasets with per-token metadata. No model code: builders take a HF (fast) tokenizer.

Causal tasks (``TASKS`` / ``load_task``) return a ``PromptSet`` with clean and corrupted batches
and a metric; probe tasks (``PROBES`` / ``load_probe``) are ``ProbeTask`` objects whose builder
returns one ``TokenBatch`` for detectors, with the scan's defaults, a capture plan and an optional
causal evaluation. Each task is one module that registers itself; builders are called as
``builder(tokenizer, *, n, seed, **params)`` and are deterministic.
"""

from headmine.core.plugins import import_submodules
from headmine.tasks.agreement import agreement
from headmine.tasks.arithmetic import arithmetic
from headmine.tasks.base import (
    METRICS,
    TokenBatch,
    encode_marked,
    encode_prompt,
    is_single_token,
    pad_batch,
    single_token_id,
)
from headmine.tasks.corpus import corpus_text
from headmine.tasks.factual import BUILTIN_RELATIONS, Relation, builtin_relation, factual, load_relation
from headmine.tasks.induction import induction
from headmine.tasks.ioi import IOI_TEMPLATES, ioi, ioi_names, ioi_probe
from headmine.tasks.jsonl import load_jsonl_task, next_token_dataset
from headmine.tasks.natural_text import natural_text
from headmine.tasks.needle import needle
from headmine.tasks.ordinal import ORDINAL_SEQUENCES, OrdinalSet, ordinal, ordinal_sets, ordinal_token_sets
from headmine.tasks.probe import CapturePlan, Decoding, EvalBatch, Evaluation, ProbeTask, token_loss
from headmine.tasks.prompt_set import PromptItem, PromptSet
from headmine.tasks.registry import PROBES, TASKS, get_probe, load_probe, load_task, register_probe
from headmine.tasks.repeated_tokens import repeated_tokens, token_pool
from headmine.tasks.successor import successor

__all__ = [
    "BUILTIN_RELATIONS",
    "IOI_TEMPLATES",
    "METRICS",
    "ORDINAL_SEQUENCES",
    "PROBES",
    "TASKS",
    "CapturePlan",
    "Decoding",
    "EvalBatch",
    "Evaluation",
    "OrdinalSet",
    "ProbeTask",
    "PromptItem",
    "PromptSet",
    "Relation",
    "TokenBatch",
    "agreement",
    "arithmetic",
    "builtin_relation",
    "corpus_text",
    "encode_marked",
    "encode_prompt",
    "factual",
    "get_probe",
    "induction",
    "ioi",
    "ioi_names",
    "ioi_probe",
    "is_single_token",
    "load_jsonl_task",
    "load_probe",
    "load_relation",
    "load_task",
    "natural_text",
    "needle",
    "next_token_dataset",
    "ordinal",
    "ordinal_sets",
    "ordinal_token_sets",
    "pad_batch",
    "register_probe",
    "repeated_tokens",
    "single_token_id",
    "successor",
    "token_loss",
    "token_pool",
]

BUILTIN_MODULES = import_submodules("headmine.tasks")
"""Every module of ``headmine.tasks``: each task file registers itself (a new task is one file)."""
