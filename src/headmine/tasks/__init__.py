"""Prompt datasets with per-token metadata. No model code: builders take a HF (fast) tokenizer.

Causal tasks (``TASKS`` / ``load_task``) return a ``PromptSet`` with clean and corrupted batches
and a metric; probe tasks (``PROBES`` / ``load_probe``) return one ``TokenBatch`` for detectors.
Every builder is called as ``builder(tokenizer, *, n, seed, **params)`` and is deterministic.
"""

from headmine.tasks.base import (
    METRICS,
    PROBES,
    TASKS,
    PromptItem,
    PromptSet,
    TokenBatch,
    encode_marked,
    encode_prompt,
    is_single_token,
    pad_batch,
    single_token_id,
)
from headmine.tasks.causal import (
    BUILTIN_RELATIONS,
    Relation,
    agreement,
    arithmetic,
    builtin_relation,
    factual,
    induction,
    load_relation,
    successor,
)
from headmine.tasks.ioi import IOI_TEMPLATES, ioi, ioi_names, ioi_probe
from headmine.tasks.jsonl import load_jsonl_task, load_probe, load_task, next_token_dataset
from headmine.tasks.probes import (
    ORDINAL_SEQUENCES,
    OrdinalSet,
    corpus_text,
    natural_text,
    needle,
    ordinal,
    ordinal_sets,
    ordinal_token_sets,
    repeated_tokens,
    token_pool,
)

__all__ = [
    "BUILTIN_RELATIONS",
    "IOI_TEMPLATES",
    "METRICS",
    "ORDINAL_SEQUENCES",
    "PROBES",
    "TASKS",
    "OrdinalSet",
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
    "repeated_tokens",
    "single_token_id",
    "successor",
    "token_pool",
]
