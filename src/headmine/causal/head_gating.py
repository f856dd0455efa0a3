"""Causal Head Gating (CHG, Nam et al. 2025): fit one sigmoid gate per (layer, query head).

Spec: ``shared/methods/METHODS.md`` section 1 (paper + official code). The model is frozen; a
:class:`~headmine.causal.Gate` multiplies each head's ``z`` (input of the attention output projection)
by ``sigmoid(theta[l, h])``. Loss per gate set (seed)::

    loss = -mean_rows(mean_target_tokens log p(y_t | y_<t))  -  lam * mean_{l,h} clamp(theta, -4, 4)

Three fits: lam = 0 from a uniform random start (G), then G+ (lam = +0.1) and G- (lam = -0.1), both
from the lam = 0 solution. Scores: facilitating F = G-, interfering N = 1 - G+, irrelevant
I = G+ (1 - G-). K gate sets (seeds) are fitted in one batched pass: the batch is repeated K times
and ``Gate(factors=[K*B, L, H])`` gives each copy its own gates. Seeds are independent: the loss is
the sum of the per-seed losses, Adam is element-wise and the gradient-norm clip is applied per seed
(the official code clips jointly; per-seed clipping makes one K-seed pass equal K separate fits).

Data: :class:`GatingData` (right-padded ids, attention mask, and a ``loss_mask`` that is True on the
tokens that are predicted, i.e. targets; position 0 is never a target).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headmine.causal.engine import intervening
from headmine.causal.interventions import Gate
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel
from headmine.tasks.base import pad_id

#: on_update(stage, step (1-based), total, loss (mean over seeds)) -- e.g. a rich progress bar.
Progress = Callable[[str, int, int, float], None]

#: loss_fn(theta [K, L, H], rows) -> (per-seed loss [K], named parts [K]); does its own backward.
LossFn = Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, dict[str, torch.Tensor]]]

LABELS = ("facilitating", "interfering", "irrelevant", "inconsistent", "unclassified")


# --------------------------------------------------------------------------- data
@dataclass(frozen=True, kw_only=True)
class GatingData:
    """Right-padded sequences with a loss mask.

    Attributes:
        input_ids: LongTensor [N, T].
        attention_mask: LongTensor [N, T], 1 on real tokens (right padding).
        loss_mask: BoolTensor [N, T], True on tokens whose prediction is scored (never position 0,
            never padding).
        texts: the source text of each row when known.
        source: a short description (file name, task name) for the atlas.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    texts: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        ids, att, lm = self.input_ids, self.attention_mask, self.loss_mask
        if ids.ndim != 2 or ids.shape != att.shape or ids.shape != lm.shape:
            raise InputError(
                f"input_ids {tuple(ids.shape)}, attention_mask {tuple(att.shape)} and loss_mask {tuple(lm.shape)} "
                "must all be [rows, positions]",
                "build the data with prompt_target_data() / text_data()",
            )
        if ids.shape[0] == 0:
            raise InputError("the gating data set is empty", "give at least one sequence with a target")
        object.__setattr__(self, "loss_mask", (lm.bool() & att.bool()).clone())
        self.loss_mask[:, 0] = False
        n_targets = self.loss_mask.sum(1)
        if (n_targets == 0).any():
            row = int((n_targets == 0).nonzero()[0, 0])
            raise InputError(
                f"row {row} of {self.source or 'the data'} has no target token to score",
                "every row needs at least one target token after the first position",
            )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention, loss_mask) of the given rows, trimmed to their longest real length."""
        index = torch.as_tensor(index, dtype=torch.long)
        att = self.attention_mask[index]
        width = max(int(att.sum(1).max()), 2)
        return self.input_ids[index, :width], att[:, :width], self.loss_mask[index, :width]

    def subset(self, n: int) -> GatingData:
        n = min(int(n), len(self))
        texts = None if self.texts is None else self.texts[:n]
        return GatingData(
            input_ids=self.input_ids[:n], attention_mask=self.attention_mask[:n], loss_mask=self.loss_mask[:n],
            texts=texts, source=self.source,
        )


def _pad(rows: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]], pad: int) -> tuple[torch.Tensor, ...]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    lm = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        att[i, : len(r)] = 1
        lm[i, : len(r)] = torch.tensor(list(m), dtype=torch.bool)
    return ids, att, lm


def token_data(
    rows: Sequence[Sequence[int]], targets: Sequence[Sequence[int]] | None = None, *,
    n_ctx: int | None = None, pad: int = 0, texts: list[str] | None = None, source: str = "",
) -> GatingData:
    """GatingData from token ids: ``rows`` are prompts and ``targets`` their continuations (loss on the
    targets only), or, when ``targets`` is None, whole sequences scored on every token but the first."""
    if not rows:
        raise InputError(f"{source or 'the data'} is empty: no sequences", "give at least one prompt")
    seqs, masks = [], []
    for i, prompt in enumerate(rows):
        prompt = list(prompt)
        if targets is None:
            seq, mask = prompt, [False] + [True] * (len(prompt) - 1)
            if len(seq) < 2:
                raise InputError(f"row {i} of {source or 'the data'} is {len(seq)} token(s); need at least 2",
                                 "drop empty or one-token lines")
        else:
            tgt = list(targets[i])
            if not tgt:
                raise InputError(f"row {i} of {source or 'the data'}: the target tokenises to nothing",
                                 "give every row a non-empty target")
            if not prompt:
                raise InputError(f"row {i} of {source or 'the data'}: the prompt tokenises to nothing",
                                 "give every row a non-empty prompt")
            seq, mask = prompt + tgt, [False] * len(prompt) + [True] * len(tgt)
        if n_ctx is not None and len(seq) > n_ctx:
            raise InputError(
                f"row {i} of {source or 'the data'} is {len(seq)} tokens but the model's context is {n_ctx}",
                "shorten that row (or split plain text into shorter paragraphs)",
            )
        seqs.append(seq)
        masks.append(mask)
    ids, att, lm = _pad(seqs, masks, pad)
    return GatingData(input_ids=ids, attention_mask=att, loss_mask=lm, texts=texts, source=source)


def prompt_target_data(lm: LoadedModel, pairs: Sequence[tuple[str, str]], *, source: str = "") -> GatingData:
    """Prompt/target strings -> GatingData with the loss on the target tokens only.

    The prompt is tokenised with the tokenizer's special tokens (e.g. BOS), the target without; the
    target keeps its leading space (write ``" Paris"``, not ``"Paris"``).
    """
    tok = lm.tokenizer
    prompts = [list(tok(p, add_special_tokens=True)["input_ids"]) for p, _ in pairs]
    targets = [list(tok(t, add_special_tokens=False)["input_ids"]) for _, t in pairs]
    return token_data(prompts, targets, n_ctx=lm.geometry.n_ctx, pad=pad_id(tok),
                      texts=[p + t for p, t in pairs], source=source)


def from_token_batch(batch: Any, *, source: str | None = None) -> GatingData:
    """GatingData from a ``tasks`` TokenBatch that carries ``meta["loss_mask"]`` (``next_token_dataset``)."""
    if "loss_mask" not in batch.meta:
        raise InputError(f"batch of task {batch.task!r} has no loss_mask", "build it with tasks.next_token_dataset()")
    return GatingData(input_ids=batch.input_ids, attention_mask=batch.attention_mask, loss_mask=batch.meta["loss_mask"],
                      texts=batch.texts, source=source or batch.task)


def from_prompt_set(prompts: Any, *, n_ctx: int | None = None) -> GatingData:
    """GatingData from a ``tasks`` PromptSet: each clean prompt followed by its target tokens (loss on
    the target only)."""
    items = prompts.items
    return token_data([it.ids for it in items], [it.target_ids for it in items], n_ctx=n_ctx,
                      pad=pad_id(prompts.tokenizer), texts=[it.prompt + it.target for it in items],
                      source=prompts.task)


def load_data_file(lm: LoadedModel, path: str | Path, *, limit: int | None = None,
                   truncation: str = "error") -> GatingData:
    """A ``.jsonl`` file of ``{"prompt": ..., "target": ...}`` rows (loss on the target), or a plain text
    file (documents separated by blank lines, loss on every token), via ``tasks.next_token_dataset``.
    Sequences longer than the model's context raise InputError unless ``truncation`` is "truncate"/"chunk"."""
    from headmine.core.errors import TaskError
    from headmine.tasks import next_token_dataset

    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} does not exist", "check the path")
    if not path.read_text(encoding="utf-8", errors="replace").strip():
        raise InputError(f"data file {path} is empty", "give a text file or a JSONL file with prompt/target rows")
    try:
        batch = next_token_dataset(path, lm.tokenizer, max_length=lm.geometry.n_ctx, truncation=truncation, n=limit)
    except TaskError as err:
        raise InputError(err.problem, err.hint) from err
    return from_token_batch(batch, source=path.name)


def task_data(lm: LoadedModel, task: str, *, n: int = 64, seed: int = 0, **params: Any) -> tuple[GatingData, Any]:
    """A built-in (or JSONL) causal task as GatingData (prompt + target, loss on the target), with its PromptSet."""
    from headmine.tasks import load_task

    prompts = load_task(task, lm.tokenizer, n=n, seed=seed, **params)
    return from_prompt_set(prompts, n_ctx=lm.geometry.n_ctx), prompts


def repeated_tokens_data(vocab: int, *, n: int = 32, length: int = 20, seed: int = 0, low: int = 0,
                         bos: int | None = None) -> GatingData:
    """Random tokens from ``[low, vocab)`` repeated once (``[bos] x x``); the loss is on the second copy
    (induction). Tokens within a copy are distinct when the range allows."""
    g = torch.Generator().manual_seed(seed)
    rows, targets = [], []
    for _ in range(n):
        if length <= vocab - low:
            x = (low + torch.randperm(vocab - low, generator=g)[:length]).tolist()
        else:
            x = torch.randint(low, vocab, (length,), generator=g).tolist()
        rows.append(([bos] if bos is not None else []) + x)
        targets.append(x)
    return token_data(rows, targets, source=f"repeated random tokens (n={n}, length={length})")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class CHGConfig:
    """Every hyper-parameter of a CHG fit. Build with :meth:`preset` and override any field.

    ``updates`` and ``lrs`` hold one entry per stage (lam = 0, G+, G-); a learning rate decays
    linearly from ``lrs[i][0]`` to ``lrs[i][1]`` over the stage. ``micro_batch`` bounds the rows
    (times seeds) of one forward pass (gradient accumulation); ``eval_rows`` bounds the rows used by
    the targeted-ablation check.
    """

    preset: str = "paper"
    updates: tuple[int, int, int] = (500, 500, 500)
    lrs: tuple[tuple[float, float], ...] = ((0.1, 0.01), (0.5, 0.1), (0.5, 0.1))
    lam: float = 0.1
    clamp: float = 4.0
    batch_size: int = 64
    micro_batch: int = 64
    grad_clip: float = 1.0
    seeds: int = 10
    seed: int = 0
    data_seed: int = 0
    init_range: tuple[float, float] = (0.0, 1.0)
    threshold: float = 0.5
    eval_rows: int = 64
    ablation_ks: tuple[int, ...] = ()

    @classmethod
    def preset_for(cls, name: str = "paper", **overrides: Any) -> CHGConfig:
        """``"paper"`` (appendix 6.2: 3 x 500 updates, batch 64, lr 0.1->0.01 then 0.5->0.1, 10 seeds) or
        ``"quick"`` (CPU: 3 x 20 updates, batch 8, higher learning rates, 2 seeds)."""
        return from_preset(PRESETS, name, "CHG", overrides)

    def __post_init__(self) -> None:
        if len(self.updates) != 3 or len(self.lrs) != 3:
            raise InputError("CHG needs 3 stages: updates and lrs must have 3 entries each", "(lam=0, G+, G-)")
        if min(self.updates) < 0 or self.batch_size < 1 or self.micro_batch < 1 or self.seeds < 1:
            raise InputError("updates must be >= 0 and batch_size, micro_batch, seeds >= 1",
                             f"got updates={self.updates}, batch_size={self.batch_size}, seeds={self.seeds}")
        if any(lr <= 0 or end <= 0 for lr, end in self.lrs):
            raise InputError(f"learning rates must be > 0, got {self.lrs}", "e.g. lrs=((0.1, 0.01), (0.5, 0.1), (0.5, 0.1))")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, CHGConfig] = {
    "paper": CHGConfig(),
    "quick": CHGConfig(preset="quick", updates=(20, 20, 20), lrs=((0.5, 0.1), (0.5, 0.1), (0.5, 0.1)),
                       batch_size=8, micro_batch=16, seeds=2, eval_rows=16),
}


# --------------------------------------------------------------------------- forward
def from_preset(presets: dict[str, Any], name: str, kind: str, overrides: dict[str, Any]) -> Any:
    """``presets[name]`` with ``overrides`` (None values ignored); unknown names and options are errors."""
    if name not in presets:
        raise InputError(f"unknown {kind} preset {name!r}", f"use one of {sorted(presets)}")
    base = presets[name]
    known = {f.name for f in fields(base)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise InputError(f"unknown {kind} option(s) {bad}", f"valid options: {sorted(known)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _target_logits(lm: LoadedModel, ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [rows, P, vocab], column [T] mapping a position to its column or -1): logits only at the
    positions that predict a target (``logits_to_keep``), when the model supports it."""
    t = ids.shape[1]
    keep = loss_mask[:, 1:].any(0).nonzero().flatten()
    if _accepts_logits_to_keep(lm.model) and keep.numel() < t:
        logits = lm.model(input_ids=ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    else:
        keep = torch.arange(t, device=ids.device)
        logits = lm.model(input_ids=ids, attention_mask=attention_mask).logits
    column = torch.full((t,), -1, dtype=torch.long, device=ids.device)
    column[keep] = torch.arange(keep.numel(), device=ids.device)
    return logits, column


def _seq_logprob(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor,
                 column: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row mean log-prob of the masked target tokens: [rows]. Only target positions are normalised.
    ``logits[:, column[t]]`` predicts token t+1 (``column`` None: the identity)."""
    mask = loss_mask[:, 1:]
    rows, pos = mask.nonzero(as_tuple=True)
    cols = pos if column is None else column[pos]
    sel = logits[rows, cols].float().log_softmax(-1)  # [n_targets, vocab]
    lp = sel.gather(-1, ids[rows, pos + 1][:, None]).squeeze(-1)
    total = torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)
    return total / mask.sum(1).clamp_min(1).to(lp.dtype)


def gated_logprob(lm: LoadedModel, ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                  gates: torch.Tensor | None) -> torch.Tensor:
    """Per-row mean target log-prob under each gate set: [K, rows] (``gates`` [K, L, H] or [L, H] or None).

    One forward pass: the rows are repeated K times and row k*B+b gets gate set k. Keeps the graph
    when called under grad (gradients flow to ``gates``). Logits are computed only at positions that
    predict a target.
    """
    dev = lm.device
    ids, attention_mask, loss_mask = ids.to(dev), attention_mask.to(dev), loss_mask.to(dev)
    lm.check_length(ids.shape[1])
    b = ids.shape[0]
    if gates is None:
        logits, column = _target_logits(lm, ids, attention_mask, loss_mask)
        return _seq_logprob(logits, ids, loss_mask, column)[None]
    if gates.dim() == 2:
        gates = gates[None]
    k = gates.shape[0]
    factors = gates[0] if k == 1 else gates.repeat_interleave(b, dim=0)
    if k > 1:
        ids, attention_mask, loss_mask = ids.repeat(k, 1), attention_mask.repeat(k, 1), loss_mask.repeat(k, 1)
    with intervening(lm, [Gate(factors=factors.to(dev))]):
        logits, column = _target_logits(lm, ids, attention_mask, loss_mask)
    return _seq_logprob(logits, ids, loss_mask, column).view(k, b)


@torch.no_grad()
def mean_logprob(lm: LoadedModel, data: GatingData, gates: torch.Tensor | None = None, *,
                 micro_batch: int = 32) -> torch.Tensor:
    """Mean over rows of the per-row mean target log-prob, per gate set: [K] (K=1 when gates is None)."""
    k = 1 if gates is None else (1 if gates.dim() == 2 else gates.shape[0])
    per_pass = max(1, micro_batch // k)
    total = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(data), per_pass):
        ids, att, lmask = data.rows(range(start, min(start + per_pass, len(data))))
        total += gated_logprob(lm, ids, att, lmask, gates).double().sum(1).cpu()
    return (total / len(data)).float()


# --------------------------------------------------------------------------- results
@dataclass
class CHGResult:
    """Fitted gates of K seeds, [K, L, H] each, with training curves.

    ``curves[stage][name]`` is float array [updates_done, K] for name in ("loss", "nll", "reg");
    stages are "G" (lam = 0), "G+" and "G-". ``status`` is "complete" or "stopped" (a non-finite loss:
    the gates are the last good ones, ``message`` says where).
    """

    G: torch.Tensor
    G_plus: torch.Tensor
    G_minus: torch.Tensor
    config: CHGConfig
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    status: str = "complete"
    message: str | None = None
    seeds: list[int] = field(default_factory=list)
    duration_s: float = 0.0
    updates_done: dict[str, int] = field(default_factory=dict)

    @property
    def F(self) -> torch.Tensor:
        """Facilitation, G-: [K, L, H]."""
        return self.G_minus

    @property
    def N(self) -> torch.Tensor:
        """Interference, 1 - G+: [K, L, H]."""
        return 1 - self.G_plus

    @property
    def I(self) -> torch.Tensor:  # noqa: E743
        """Irrelevance, G+ (1 - G-): [K, L, H]."""
        return self.G_plus * (1 - self.G_minus)

    def label_codes(self) -> torch.Tensor:
        """LongTensor [K, L, H] indexing :data:`LABELS` per seed (threshold from the config)."""
        return label_codes(self.G_plus, self.G_minus, self.config.threshold)

    def aggregate(self) -> dict[str, torch.Tensor]:
        """Across seeds, [L, H] each: ``{F,N,I}_always`` / ``_any`` (fraction of heads labelled so in all /
        at least one seed, as bool), ``{F,N,I}_max`` / ``_mean`` (score max / mean over seeds)."""
        codes = self.label_codes()
        out: dict[str, torch.Tensor] = {}
        for name, idx, score in (("F", 0, self.F), ("N", 1, self.N), ("I", 2, self.I)):
            hit = codes == idx
            out[f"{name}_always"] = hit.all(0)
            out[f"{name}_any"] = hit.any(0)
            out[f"{name}_max"] = score.max(0).values
            out[f"{name}_mean"] = score.mean(0)
        return out

    def shares(self) -> dict[str, float]:
        """Fractions of heads per label (pooled over seeds) and per always/any aggregate."""
        codes = self.label_codes()
        out = {f"{lab}": float((codes == i).float().mean()) for i, lab in enumerate(LABELS)}
        agg = self.aggregate()
        for name in ("F", "N", "I"):
            out[f"{name}_always"] = float(agg[f"{name}_always"].float().mean())
            out[f"{name}_any"] = float(agg[f"{name}_any"].float().mean())
        return out

    def seed_agreement(self) -> dict[str, float]:
        """Mean pairwise agreement between seeds: Pearson r of F, N, I and the fraction of equal labels."""
        k = self.G_plus.shape[0]
        if k < 2:
            return {}
        codes = self.label_codes().flatten(1)
        out: dict[str, float] = {}
        for name, score in (("F", self.F), ("N", self.N), ("I", self.I)):
            flat = score.flatten(1).double()
            rs = [float(np.corrcoef(flat[i].numpy(), flat[j].numpy())[0, 1]) for i in range(k) for j in range(i + 1, k)]
            out[f"{name}_pearson"] = float(np.nanmean(rs))
        same = [float((codes[i] == codes[j]).float().mean()) for i in range(k) for j in range(i + 1, k)]
        out["label_agreement"] = float(np.mean(same))
        return out


def label_codes(g_plus: torch.Tensor, g_minus: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-head label index into :data:`LABELS`: facilitating (G+ and G- high), interfering (both low),
    irrelevant (I >= threshold), inconsistent (G+ low, G- high), else unclassified."""
    hi_p, hi_m = g_plus >= threshold, g_minus >= threshold
    irr = g_plus * (1 - g_minus) >= threshold
    codes = torch.full(g_plus.shape, 4, dtype=torch.long)
    codes[irr] = 2
    codes[hi_p & hi_m] = 0
    codes[~hi_p & ~hi_m] = 1
    codes[~hi_p & hi_m] = 3
    return codes


# --------------------------------------------------------------------------- fitting
def init_logits(k: int, n_layers: int, n_heads: int, *, seed: int = 0, init_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """theta [K, L, H] = logit(U(lo, hi)); seed k uses generator ``seed + k`` (independent of K)."""
    lo, hi = init_range
    out = []
    for i in range(k):
        g = torch.Generator().manual_seed(int(seed) + i)
        u = lo + (hi - lo) * torch.rand(n_layers, n_heads, generator=g)
        out.append(torch.logit(u.clamp(1e-4, 1 - 1e-4)))
    return torch.stack(out)


class _Batches:
    """Endless shuffled mini-batches of row indices (each epoch a new permutation)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.bs = n, min(batch_size, n)
        self.g = torch.Generator().manual_seed(seed)
        self.perm: list[int] = []

    def next(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.bs:
            if not self.perm:
                self.perm = torch.randperm(self.n, generator=self.g).tolist()
            out.append(self.perm.pop())
        return out


def _clip_per_seed(grad: torch.Tensor, max_norm: float) -> None:
    if max_norm and max_norm > 0:
        norms = grad.flatten(1).norm(dim=1)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        grad.mul_(scale.view(-1, *([1] * (grad.dim() - 1))))


@dataclass
class _Stage:
    theta: torch.Tensor
    curves: dict[str, np.ndarray]
    done: int
    stopped: str | None


def fit_stage(
    loss_fn: LossFn,
    theta0: torch.Tensor,
    *,
    updates: int,
    lr: tuple[float, float],
    grad_clip: float,
    batches: _Batches,
    stage: str,
    progress: Progress | None = None,
) -> _Stage:
    """Adam on theta [K, ...] with a linear lr decay; ``loss_fn(theta, rows)`` -> (per-seed loss [K], parts).

    A non-finite loss or gradient stops the stage with the last good theta.
    """
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr[0])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 + (lr[1] / lr[0] - 1.0) * min(i, max(updates - 1, 1)) / max(updates - 1, 1)
    )
    log: dict[str, list[np.ndarray]] = {}
    stopped = None
    done = 0
    for step in range(updates):
        rows = batches.next()
        opt.zero_grad(set_to_none=True)
        loss, parts = loss_fn(theta, rows)
        if not torch.isfinite(loss).all() or theta.grad is None or not torch.isfinite(theta.grad).all():
            stopped = f"non-finite loss at stage {stage}, update {step + 1}; kept the gates of update {step}"
            break
        _clip_per_seed(theta.grad, grad_clip)
        with torch.no_grad():
            before = theta.detach().clone()
            opt.step()
            if not torch.isfinite(theta).all():
                theta.copy_(before)
                stopped = f"non-finite gate logits at stage {stage}, update {step + 1}; kept the previous ones"
                break
        sched.step()
        done += 1
        for name, value in {"loss": loss, **parts}.items():
            log.setdefault(name, []).append(value.detach().float().cpu().numpy())
        if progress is not None:
            progress(stage, step + 1, updates, float(loss.mean()))
    curves = {k: np.stack(v) for k, v in log.items()}
    return _Stage(theta.detach(), curves, done, stopped)


def chg_loss_fn(lm: LoadedModel, data: GatingData, lam: float, cfg: CHGConfig) -> LossFn:
    """loss_fn for :func:`fit_stage`: per-seed NLL - lam * mean clamp(theta); backward is done inside
    (micro-batched), the returned loss is detached."""

    def fn(theta: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        k = theta.shape[0]
        per_pass = max(1, cfg.micro_batch // k)
        nll = torch.zeros(k)
        for start in range(0, len(rows), per_pass):
            chunk = rows[start : start + per_pass]
            ids, att, lmask = data.rows(chunk)
            lp = gated_logprob(lm, ids, att, lmask, torch.sigmoid(theta))  # [K, b]
            part = -lp.sum(1) / len(rows)
            if not torch.isfinite(part).all():
                return part.detach().cpu(), {}
            part.sum().backward()
            nll += part.detach().cpu()
        reg = theta.clamp(-cfg.clamp, cfg.clamp).mean(dim=(1, 2))
        if lam:
            (-lam * reg).sum().backward()
        return nll - lam * reg.detach().cpu(), {"nll": nll, "reg": reg.detach().cpu()}

    return fn


def fit_chg(lm: LoadedModel, data: GatingData, config: CHGConfig | None = None, *,
            progress: Progress | None = None) -> CHGResult:
    """The three CHG fits for ``config.seeds`` seeds at once. See the module docstring."""
    cfg = config or CHGConfig()
    g = lm.geometry
    if any(p.requires_grad for p in lm.model.parameters()):
        raise InputError("the model has trainable parameters; CHG needs a frozen model",
                         "load it with load_model() (weights are frozen) or call requires_grad_(False)")
    lm.check_length(int(data.attention_mask.sum(1).max()))
    start = time.perf_counter()
    theta0 = init_logits(cfg.seeds, g.n_layers, g.n_heads, seed=cfg.seed, init_range=cfg.init_range)
    thetas = {"G": theta0, "G+": theta0, "G-": theta0}
    curves: dict[str, dict[str, np.ndarray]] = {}
    done: dict[str, int] = {}
    stopped = None
    plan = (("G", 0.0, 0), ("G+", cfg.lam, 1), ("G-", -cfg.lam, 2))
    for stage, lam, i in plan:
        init = theta0 if stage == "G" else thetas["G"]
        thetas[stage] = init
        if stopped:
            done[stage] = 0
            continue
        res = fit_stage(chg_loss_fn(lm, data, lam, cfg), init, updates=cfg.updates[i], lr=cfg.lrs[i],
                        grad_clip=cfg.grad_clip, batches=_Batches(len(data), cfg.batch_size, cfg.data_seed + 1000 * i),
                        stage=stage, progress=progress)
        thetas[stage], curves[stage], done[stage], stopped = res.theta, res.curves, res.done, res.stopped
    return CHGResult(
        G=torch.sigmoid(thetas["G"]), G_plus=torch.sigmoid(thetas["G+"]), G_minus=torch.sigmoid(thetas["G-"]),
        config=cfg, curves=curves, status="stopped" if stopped else "complete", message=stopped,
        seeds=[cfg.seed + k for k in range(cfg.seeds)], duration_s=time.perf_counter() - start, updates_done=done,
    )


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def targeted_ablation(lm: LoadedModel, data: GatingData, g_plus: torch.Tensor, scores: dict[str, torch.Tensor],
                      ks: Sequence[int], *, micro_batch: int = 32) -> dict[str, np.ndarray]:
    """Paper Fig. 2: from G+ [L, H], set the top-k heads of each score [L, H] to 0 vs to 1;
    returns ``{name: delta [len(ks)]}`` with delta = logp(top-k := 0) - logp(top-k := 1) (mean over rows)."""
    sets = []
    for score in scores.values():
        order = torch.argsort(score.flatten(), descending=True, stable=True)
        for k in ks:
            lo, hi = g_plus.flatten().clone(), g_plus.flatten().clone()
            lo[order[:k]] = 0.0
            hi[order[:k]] = 1.0
            sets += [lo.view_as(g_plus), hi.view_as(g_plus)]
    gates = torch.stack(sets)
    lps = []
    chunk = max(1, micro_batch // 2) * 2
    for s in range(0, gates.shape[0], chunk):
        lps.append(mean_logprob(lm, data, gates[s : s + chunk], micro_batch=max(micro_batch, chunk)))
    lp = torch.cat(lps).view(len(scores), len(ks), 2)
    return {name: (lp[i, :, 0] - lp[i, :, 1]).numpy() for i, name in enumerate(scores)}


def default_ks(n_heads_total: int) -> tuple[int, ...]:
    raw = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    return tuple(k for k in raw if k <= n_heads_total // 2) or (1,)


def patching_agreement(facilitation: torch.Tensor, mediating: Sequence[HeadId]) -> dict[str, float]:
    """Welch t-test (paper Fig. 4): facilitation [L, H] (e.g. max over seeds) of the mediating heads vs
    all other heads. Returns t, df, p (one-sided, mediating > others), the two means and counts."""
    from scipy import stats

    mask = torch.zeros_like(facilitation, dtype=torch.bool)
    for h in mediating:
        mask[h.layer, h.head] = True
    med, other = facilitation[mask].double().numpy(), facilitation[~mask].double().numpy()
    if len(med) < 2 or len(other) < 2:
        return {"t": math.nan, "df": math.nan, "p": math.nan, "mean_mediating": float(np.mean(med)) if len(med) else math.nan,
                "mean_other": float(np.mean(other)) if len(other) else math.nan, "n_mediating": len(med), "n_other": len(other)}
    t = stats.ttest_ind(med, other, equal_var=False, alternative="greater")
    v1, v2 = med.var(ddof=1) / len(med), other.var(ddof=1) / len(other)
    df = (v1 + v2) ** 2 / (v1**2 / (len(med) - 1) + v2**2 / (len(other) - 1)) if v1 + v2 > 0 else math.nan
    return {"t": float(t.statistic), "df": float(df), "p": float(t.pvalue), "mean_mediating": float(med.mean()),
            "mean_other": float(other.mean()), "n_mediating": len(med), "n_other": len(other)}


def mediating_heads(effects: torch.Tensor, n_sd: float = 3.0) -> list[HeadId]:
    """Heads whose patching effect [L, H] is more than ``n_sd`` standard deviations above the mean (paper 4.3)."""
    e = effects.double()
    cut = e.mean() + n_sd * e.std()
    return [HeadId(int(l_), int(h)) for l_, h in (e > cut).nonzero().tolist()]
