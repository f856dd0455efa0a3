"""What every application measures the same way: fixed-seed splits, random-head baselines, paired
bootstrap intervals, the corpus cost, and greedy generation.

Rules the applications share (the issue's, and the project's): every choice (heads, scales, K,
alpha, layer) is made on the *fit* split; everything reported is measured on the *held-out* split;
each effect is compared with the same edit on random heads of the same number; intervals are
percentile bootstraps over held-out items (paired where before and after are the same items); an
interval that includes zero is reported as not significant.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from headmine.causal.metrics import bootstrap_ci, next_token_loss
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.tasks.natural_text import natural_text

Edit = Callable[[], AbstractContextManager[Any]]
"""A zero-argument factory of the context manager that applies an edit (``nullcontext`` for none)."""


def group_split(groups: Sequence[Any], *, heldout_frac: float = 0.3, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (fit, held-out) splitting whole groups (a question with all its answers, a task, a topic)
    by a fixed seed: no group has items on both sides. At least one group lands on each side."""
    if not 0.0 < heldout_frac < 1.0:
        raise InputError(f"held-out fraction {heldout_frac} is not between 0 and 1", "use e.g. 0.3")
    unique = sorted(set(groups), key=str)
    if len(unique) < 2:
        raise InputError(f"{len(unique)} group(s) cannot be split into fit and held-out parts", "give at least two groups")
    order = list(unique)
    random.Random(seed).shuffle(order)
    n_held = min(len(order) - 1, max(1, round(heldout_frac * len(order))))
    held = set(order[:n_held])
    fit_idx = [i for i, g in enumerate(groups) if g not in held]
    held_idx = [i for i, g in enumerate(groups) if g in held]
    return fit_idx, held_idx


def random_head_sets(heads: Sequence[HeadId], k: int, n_draws: int, *, seed: int = 0,
                     exclude: Sequence[HeadId] = ()) -> list[tuple[HeadId, ...]]:
    """``n_draws`` sets of ``k`` heads drawn uniformly (fixed seed) from ``heads`` minus ``exclude``."""
    pool = [h for h in heads if h not in set(exclude)]
    if k > len(pool):
        raise InputError(f"cannot draw {k} random heads from {len(pool)}", "use a smaller k")
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(pool, k))) for _ in range(n_draws)]


def mean_ci(values: Sequence[float] | np.ndarray | torch.Tensor, *, seed: int = 0) -> dict[str, Any]:
    """{"value", "ci", "n"}: the mean of ``values`` with its 95% percentile-bootstrap interval."""
    t = torch.as_tensor(np.asarray(values, dtype=np.float64))
    mean, lo, hi = bootstrap_ci(t, seed=seed)
    return {"value": mean, "ci": [lo, hi], "n": int(t.numel())}


def effect_row(split: str, condition: str, metric: str, after: Sequence[float] | np.ndarray | torch.Tensor,
               before: Sequence[float] | np.ndarray | torch.Tensor | None = None, *, seed: int = 0,
               **extra: Any) -> dict[str, Any]:
    """One row of a before/after table: ``after``'s mean and CI and, when ``before`` (the same items
    without the edit) is given, the paired difference after - before with its CI and whether the CI
    excludes zero. Rows of every application have these keys; the report and the CLI print them."""
    a = np.asarray(after, dtype=np.float64)
    row: dict[str, Any] = {"split": split, "condition": condition, "metric": metric} | mean_ci(a, seed=seed)
    if before is not None:
        b = np.asarray(before, dtype=np.float64)
        if b.shape != a.shape:
            raise ValueError(f"paired rows need the same items: {b.shape} vs {a.shape}")
        d = mean_ci(a - b, seed=seed)
        lo, hi = d["ci"]
        row |= {"delta": d["value"], "delta_ci": d["ci"], "significant": bool(lo > 0 or hi < 0)}
    return row | extra


def random_baseline_row(split: str, condition: str, metric: str, draws: Sequence[np.ndarray | Sequence[float]],
                        before: Sequence[float] | np.ndarray | None = None, *, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """A row for the same edit on random heads: per item, the mean over the draws (so its CI is over
    items, comparable with the chosen heads' row); ``draw_means`` lists each draw's own mean."""
    arr = np.stack([np.asarray(d, dtype=np.float64) for d in draws])
    row = effect_row(split, condition, metric, arr.mean(0), before, seed=seed, **extra)
    return row | {"draw_means": [float(x) for x in arr.mean(1)], "n_draws": int(arr.shape[0])}


def difference_row(split: str, condition: str, metric: str, chosen: Sequence[float] | np.ndarray,
                   baseline: Sequence[float] | np.ndarray, *, seed: int = 0, **extra: Any) -> dict[str, Any]:
    """Chosen minus baseline per item (paired), with its CI: the claim "the heads beat random heads"."""
    return effect_row(split, condition, metric, np.asarray(chosen, dtype=np.float64),
                      np.asarray(baseline, dtype=np.float64), seed=seed, **extra)


def corpus_windows(lm: Any, *, n: int = 8, seq_len: int = 64, seed: int = 0) -> torch.Tensor:
    """[n, seq_len + 1] token windows of the embedded corpus (BOS first): where costs are measured."""
    return natural_text(lm.tokenizer, n=n, seq_len=seq_len, seed=seed).input_ids


def corpus_cost(lm: Any, windows: torch.Tensor, edit: Edit | None, *, base: float | None = None) -> dict[str, float]:
    """{"loss_before", "loss_after", "cost"}: next-token loss on ``windows`` without and with ``edit``
    (nats/token; ``base`` reuses a plain loss already measured)."""
    before = next_token_loss(lm, windows) if base is None else base
    with (edit or nullcontext)():
        after = next_token_loss(lm, windows)
    return {"loss_before": before, "loss_after": after, "cost": after - before}


def generate_texts(lm: Any, prompts: Sequence[str], *, max_new_tokens: int = 32, edit: Edit | None = None,
                   chat: bool = False, system: str | None = None, batch_size: int = 8) -> list[str]:
    """Greedy continuations of ``prompts`` (only the new text), optionally under ``edit``.

    ``chat`` renders each prompt through the tokenizer's chat template as one user turn (with
    ``system`` as the system turn when given). Batches are left-padded, so the last position of
    each forward call is every row's newest token (what "generated positions" edits act on).
    """
    tok = lm.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    texts = list(prompts)
    if chat:
        if getattr(tok, "chat_template", None) is None:
            raise InputError(f"{lm.name} has no chat template", "run without chat formatting, or use an instruct model")
        texts = [tok.apply_chat_template(([{"role": "system", "content": system}] if system else [])
                                         + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in texts]
    out: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True,
                      add_special_tokens=not chat)
            lm.check_length(enc["input_ids"].shape[1] + max_new_tokens)
            with torch.no_grad(), (edit or nullcontext)():
                ids = lm.model.generate(input_ids=enc["input_ids"].to(lm.device),
                                        attention_mask=enc["attention_mask"].to(lm.device),
                                        max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=tok.pad_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return out
