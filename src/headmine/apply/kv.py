"""Retrieval and streaming heads for the KV cache (issue 13 §5): ``headmine kv``, kind ``kv``.

DuoAttention (Xiao et al. 2024) and RazorAttention (Tang et al. 2024) keep a full KV cache only for
*retrieval* heads; every other (*streaming*) head keeps the first ``sink`` tokens and the ``recent``
most recent ones. This module:

1. **Classifies heads from retrieval scores** (Wu et al. 2024, the project's retrieval detector's
   rule), not from DuoAttention's trained gates (not done here: a choice, for CPU budgets). Scores are
   measured on the FIT needles of the project's needle task (:mod:`headmine.tasks.needle`): one
   teacher-forced forward over prompt + answer per needle, the attention row of each answer token's
   predicting position; a copy-paste event is "the most-attended position lies in the answer span of
   the needle and holds the token being produced"; score = events / answer tokens, averaged over the
   needles the model retrieves (every answer token is the greedy choice). Teacher forcing on a
   retrieved needle is exactly greedy decoding of it (the paper decodes; the prefix is the same).
   The paper's k is the needle's tokens the model must copy: here the answer (a 5-digit code), so
   scores lie in [0, 1] (the scan detector divides by the whole needle sentence instead).
2. **GQA**: the cache is per KV head, so a KV head's score is the MAX over its query heads
   (RazorAttention's vendor rule): it is full when any of its query heads is a retrieval head. The
   budget (share of full KV heads) keeps the top-scoring KV heads full (ties broken by a fixed seed).
3. **Mixed cache at generation** (:func:`mixed_cache`): a transformers attention function registered
   with ``AttentionInterface`` (and the base implementation's mask function with
   ``AttentionMaskInterface``) wraps the model's own kernel (SDPA or eager); on a layer with streaming
   heads it passes a per-head mask: query i of a streaming head sees key j iff the base mask allows it
   and (j < sink or j > i - recent), in real-token positions (left padding is skipped, from the 2-D
   attention mask of the current call). This is DuoAttention's streaming mask; under KV-cached decoding
   it reads exactly the entries a cache that evicts the middle would keep, so outputs are those of the
   mixed cache. Masking alone frees no memory, so under ``generate`` (any call given a fresh cache) the
   cache is made COMPACT (:mod:`headmine.apply.kv_cache`): streaming KV heads store only sink + recent
   tokens, evicting the rest after each attention call, with outputs equal to the masked version (to
   float rounding, tested). KV memory is reported twice: COMPUTED from the policy (tokens kept x KV heads
   x d_head x 2 (K and V) x bytes per value) per context length, and MEASURED (bytes of the tensors the
   compact cache holds after generating the answer of one held-out needle at the longest length) next
   to the plain cache's measured bytes (layers with their own sliding window, as Gemma 3's, keep at most
   that window either way). With every head full the model runs untouched (same logits, bit for bit).
4. **Evaluation on HELD-OUT needles** (heads chosen on fit needles; needles are split by a fixed seed,
   each needle with all its depths and lengths on one side): needle accuracy (all answer tokens
   greedy-correct, teacher forced as above) at each context length and budget, for the full cache, the
   chosen retrieval heads full, the same number of random KV heads full (``n_random`` draws, averaged per
   needle) and no head full; 95% CIs are bootstraps over held-out needles (each needle's mean over
   depths); "retrieval - random" rows are paired differences.

Data: the needle task (invented facts "The secret code of the {adjective} {noun} is {5 digits}." in
the project's corpus sentences), ``n`` needles x context lengths x depths; a KV artifact stores the
per-KV-head scores, the full-head mask at the saved budget, and ``sink``/``recent``.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from headmine.apply.artifact import HeadArtifact, geometry_of
from headmine.apply.evaluation import difference_row, effect_row, group_split, random_baseline_row
from headmine.apply.kv_cache import CompactLayer, cache_bytes, compact_layers, kv_memory
from headmine.apply.registry import Application, register_application
from headmine.apply.result import ApplyResult
from headmine.capture import CaptureSpec, run_capture
from headmine.capture.hooks import HookSpec, attention_implementation, hooks
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.core.tables import head_matrix_frame
from headmine.models.base import attention_implementation_of
from headmine.tasks.needle import needle

NAME = "kv"
TITLE = "Retrieval and streaming heads for the KV cache"
PAPER = "Wu et al. 2024 (retrieval heads); Xiao et al. 2024 (DuoAttention); Tang et al. 2024 (RazorAttention)"
_ATTR = "_headmine_kv"


# --------------------------------------------------------------------------- the mixed cache
@dataclass(frozen=True)
class KVPolicy:
    """Which KV heads keep a full cache: ``full`` bool [n_layers, n_kv_heads]; the others keep the first
    ``sink`` and the last ``recent`` tokens."""

    full: torch.Tensor
    sink: int = 16
    recent: int = 64

    def __post_init__(self) -> None:
        if self.full.dim() != 2:
            raise InputError(f"a KV policy needs a [layers, kv_heads] mask, got shape {tuple(self.full.shape)}",
                             "give one bool per (layer, KV head)")
        if self.sink < 0 or self.recent < 1:
            raise InputError(f"sink={self.sink}, recent={self.recent}: need sink >= 0 and recent >= 1",
                             "e.g. sink 16, recent 64")

    @property
    def share_full(self) -> float:
        return float(self.full.float().mean())


def _base_function(module: Any, base: str) -> Callable[..., Any]:
    if base == "eager":  # each family has its own eager function (softcapping, scaling...)
        return sys.modules[type(module).__module__].eager_attention_forward  # type: ignore[no-any-return]
    return ALL_ATTENTION_FUNCTIONS[base]  # type: ignore[no-any-return]


def _allowed_from_mask(mask: torch.Tensor | None, b: int, tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """Bool [b|1, 1, tq, tk]: what the base mask lets each query see (causal when there is none)."""
    if mask is None:
        q = torch.arange(tk - tq, tk, device=device)[:, None]
        return (torch.arange(tk, device=device)[None, :] <= q)[None, None]
    m = mask[:, :, :, :tk]
    return m if m.dtype == torch.bool else m == 0


def streaming_allowed(valid: torch.Tensor, tq: int, sink: int, recent: int,
                      real: torch.Tensor | None = None) -> torch.Tensor:
    """Bool [b, 1, tq, tk]: DuoAttention's streaming rule in real-token positions. ``valid`` [b, tk] marks
    real (non-padding) keys; the queries are the last ``tq`` keys. Key j (real index r_j) is kept for
    query i (real index r_i) iff r_j < sink or r_j > r_i - recent (causality comes from the base mask).
    ``real`` [b, tk]: the keys' real indices when they do not start at the first token (a cache that
    holds only a sliding window); by default counted from ``valid``."""
    if real is None:
        real = valid.long().cumsum(-1) - 1  # [b, tk]
    rq = real[:, -tq:]  # [b, tq]
    keep = (real[:, None, :] < sink) | (real[:, None, :] > rq[:, :, None] - recent)
    return (keep & valid[:, None, :])[:, None]


def _kv_attention(base: str) -> Callable[..., Any]:
    def fn(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
           *args: Any, **kwargs: Any) -> Any:
        state = getattr(module, _ATTR, None)
        inner = _base_function(module, base)
        if state is None or bool(state["full_q"].all()):
            return inner(module, query, key, value, attention_mask, *args, **kwargs)
        cache = state["box"].get("cache")
        layer = cache.layers[module.layer_idx] if cache is not None and module.layer_idx < len(cache.layers) else None
        if isinstance(layer, CompactLayer):
            return _compact_attention(base, inner, state, layer, module, query, key, value, attention_mask,
                                      *args, **kwargs)
        b, _, tq, tk = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
        allowed = _allowed_from_mask(attention_mask, b, tq, tk, query.device)
        mask2d = state["box"].get("mask")
        if mask2d is None:
            valid = torch.ones(b, tk, dtype=torch.bool, device=query.device)
            real = None
        else:  # the keys are the LAST tk positions (a sliding-window layer's cache holds only its window)
            m = mask2d.to(query.device).bool()
            valid, real = m[:, -tk:], (m.long().cumsum(-1) - 1)[:, -tk:]
        stream = streaming_allowed(valid, tq, state["sink"], state["recent"], real=real)
        full_q = state["full_q"].to(query.device)[None, :, None, None]
        per_head = allowed & (full_q | stream)  # [b, H, tq, tk]
        if base == "eager":
            new_mask: torch.Tensor = torch.zeros(per_head.shape, dtype=query.dtype, device=query.device)
            new_mask.masked_fill_(~per_head, torch.finfo(query.dtype).min)
        else:
            new_mask = per_head
        return inner(module, query, key, value, new_mask, *args, **kwargs)

    return fn


def _compact_attention(base: str, inner: Callable[..., Any], state: dict[str, Any], layer: CompactLayer,
                       module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: Any, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The model's kernel twice: full heads against ``key``/``value`` (the full KV heads, with the model's
    mask), streaming heads against the layer's compact keys (gathered mask AND streaming rule); then the
    layer evicts what no later query can see."""
    fq, sq = state["full_q_idx"].to(query.device), state["stream_q_idx"].to(query.device)
    assert layer.sk is not None and layer.sv is not None
    b, n_heads, tq = query.shape[0], query.shape[1], query.shape[2]
    out = torch.zeros(b, tq, n_heads, layer.sv.shape[-1], dtype=query.dtype, device=query.device)
    if fq.numel():
        out[:, :, fq] = inner(module, query[:, fq], key, value, attention_mask, *args, **kwargs)[0]
    allowed = layer.stream_mask(attention_mask if isinstance(attention_mask, torch.Tensor) else None)
    if base == "eager":
        mask: torch.Tensor = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
        mask.masked_fill_(~allowed, torch.finfo(query.dtype).min)
    else:
        mask = allowed
    out[:, :, sq] = inner(module, query[:, sq], layer.sk, layer.sv, mask, *args, **kwargs)[0]
    layer.evict()
    return out, None


def _implementation(base: str) -> str:
    """Register (once) and return the name of the mixed-cache attention wrapping ``base``."""
    if base not in ("eager", "sdpa"):
        raise InputError(f"the mixed KV cache supports eager and SDPA attention, not {base!r}",
                         "load the model with attn_implementation='sdpa' or 'eager'")
    name = f"headmine_kv_{base}"
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, _kv_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[base])
    return name


@contextmanager
def mixed_cache(lm: Any, policy: KVPolicy, *, compact: bool = True) -> Iterator[None]:
    """Every forward pass inside (``lm.model.generate`` included) attends as a mixed KV cache: full for
    the policy's full KV heads, sink + recent window for the others. With ``compact`` (default), a fresh
    transformers cache passed to a call (as ``generate`` does) really stores only sink + recent tokens for
    the streaming KV heads (:mod:`headmine.apply.kv_cache`); calls without a cache are masked."""
    g = lm.geometry
    if tuple(policy.full.shape) != (g.n_layers, g.n_kv_heads):
        raise InputError(f"the KV policy has shape {tuple(policy.full.shape)}; {lm.name} needs "
                         f"[{g.n_layers}, {g.n_kv_heads}] (layers x KV heads)", "fit the policy on this model")
    base = attention_implementation_of(lm.model)
    if base.startswith("headmine_kv_"):
        raise InputError("a mixed KV cache is already active on this model", "do not nest mixed_cache blocks")
    name = _implementation(base)
    box: dict[str, Any] = {}
    group = g.n_heads // g.n_kv_heads
    mods = [lm.adapter.attention(layer) for layer in range(g.n_layers)]

    def grab_mask(module: Any, args: Any, kwargs: Any) -> None:
        m = kwargs.get("attention_mask")
        box["mask"] = m if isinstance(m, torch.Tensor) and m.dim() == 2 else None
        c = kwargs.get("cache", kwargs.get("past_key_values"))
        box["cache"] = c if compact and compact_layers(c, policy.full, sink=policy.sink, recent=policy.recent,
                                                        box=box) else None

    try:
        for layer, mod in enumerate(mods):
            full_q = policy.full[layer].bool().cpu().repeat_interleave(group)
            setattr(mod, _ATTR, {"full_q": full_q, "sink": policy.sink, "recent": policy.recent, "box": box,
                                 "full_q_idx": torch.nonzero(full_q, as_tuple=True)[0],
                                 "stream_q_idx": torch.nonzero(~full_q, as_tuple=True)[0]})
        with hooks([HookSpec(lm.model, "pre", grab_mask)]), attention_implementation(lm.model, name):
            yield
    finally:
        for mod in mods:
            if hasattr(mod, _ATTR):
                delattr(mod, _ATTR)


def measured_memory(lm: Any, ids: list[int], new_tokens: int, policies: dict[str, KVPolicy | None]
                    ) -> list[dict[str, Any]]:
    """Generate ``new_tokens`` greedy tokens after ``ids`` once per policy (None: the plain cache) with the
    compact mixed cache, and MEASURE the bytes the cache holds at the end (:func:`cache_bytes`), next to
    the figure :func:`kv_memory` computes for the same number of cached tokens."""
    x = torch.tensor([ids], device=lm.device)
    n_cached = len(ids) + new_tokens - 1  # the last generated token is never fed back
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    out = []
    g = lm.geometry
    for name, pol in policies.items():
        cache = DynamicCache(config=lm.model.config)
        with mixed_cache(lm, pol) if pol is not None else nullcontext(), torch.no_grad():
            lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), cache=cache, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=pad)
        full_pol = pol or KVPolicy(torch.ones(g.n_layers, g.n_kv_heads, dtype=torch.bool))
        out.append({"condition": name, "n_cached": n_cached, **cache_bytes(cache),
                    "computed": kv_memory(lm, full_pol, n_cached)})
    return out


# --------------------------------------------------------------------------- scoring
def _rows(batch: Any) -> list[tuple[list[int], list[int]]]:
    out = []
    for i in range(len(batch)):
        ids = batch.input_ids[i, : int(batch.lengths[i])].tolist()
        out.append((ids, list(batch.meta["answer_ids"][i])))
    return out


def retrieval_scores(lm: Any, batch: Any, rows: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Per query head [L, H]: mean retrieval score over the rows of the needle ``batch`` that the model
    retrieves (see the module docstring), and how many it retrieved."""
    g = lm.geometry
    total = torch.zeros(g.n_layers, g.n_heads, dtype=torch.float64)
    n_ok = 0
    pairs = _rows(batch)
    for i in rows:
        prompt, ans = pairs[i]
        ids = torch.tensor([prompt + ans])
        qpos = tuple(range(len(prompt) - 1, len(prompt) - 1 + len(ans)))
        rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.PATTERN}), query_positions=qpos), ids)
        assert rec.logits is not None
        pred = rec.logits[0, list(qpos)].argmax(-1).cpu()
        if not bool((pred == torch.tensor(ans)).all()):
            continue
        n_ok += 1
        a0, a1 = (int(x) for x in batch.meta["answer_span"][i])
        tgt = torch.tensor(ans)
        for layer, pat in rec.pattern.items():
            j = pat[0].float().argmax(-1).cpu()  # [H, n_ans]
            inside = (j >= a0) & (j < a1)
            same = ids[0][j] == tgt[None, :]
            total[layer, rec.heads[layer]] += (inside & same).double().sum(-1).cpu() / len(ans)
    return (total / max(n_ok, 1)).float(), n_ok


def kv_head_scores(scores: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """[L, H] query-head scores -> [L, H_kv]: max over each KV head's query heads."""
    n_layers, n_heads = scores.shape
    return scores.view(n_layers, n_kv_heads, n_heads // n_kv_heads).amax(-1)


def policy_for(kv_scores: torch.Tensor, n_full: int, *, sink: int, recent: int, seed: int = 0) -> KVPolicy:
    """The ``n_full`` top-scoring KV heads full (ties broken by a fixed-seed random order)."""
    flat = kv_scores.flatten().double()
    tie = torch.rand(flat.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), float(tie[i])))
    full = torch.zeros(flat.numel(), dtype=torch.bool)
    full[order[:n_full]] = True
    return KVPolicy(full.view_as(kv_scores), sink=sink, recent=recent)


def needle_correct(lm: Any, batch: Any, rows: Sequence[int], policy: KVPolicy | None) -> np.ndarray:
    """1.0 per row when every answer token is the greedy choice (teacher forced) under ``policy``
    (None: the plain full cache)."""
    out = []
    pairs = _rows(batch)
    with mixed_cache(lm, policy) if policy is not None else nullcontext(), torch.no_grad():
        for i in rows:
            prompt, ans = pairs[i]
            ids = torch.tensor([prompt + ans], device=lm.device)
            lm.check_length(ids.shape[1])
            logits = lm.model(input_ids=ids, logits_to_keep=len(ans) + 1).logits[0, :-1]
            out.append(float(bool((logits.argmax(-1).cpu() == torch.tensor(ans)).all())))
    return np.asarray(out)


# --------------------------------------------------------------------------- application
class KVApplication(Application):
    name = NAME
    title = TITLE
    paper = PAPER
    head_types = ("Retrieval Head", "Streaming Head")

    @contextmanager
    def apply(self, lm: Any, artifact: HeadArtifact) -> Iterator[None]:
        """Run with the artifact's mixed cache (``full`` KV-head mask, ``sink``, ``recent``)."""
        if "full" not in artifact.tensors:
            raise InputError("the kv artifact has no 'full' tensor", "save it again with headmine kv --save")
        policy = KVPolicy(artifact.tensors["full"] > 0.5, sink=int(artifact.params["sink"]),
                          recent=int(artifact.params["recent"]))
        with mixed_cache(lm, policy):
            yield


APP = register_application(KVApplication())


@dataclass(frozen=True)
class KVConfig:
    """Settings of one ``kv`` run (defaults sized for SmolLM2 on 2 CPU cores, a few minutes)."""

    n: int = 8
    context_lengths: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[float, ...] = (0.5,)
    budgets: tuple[float, ...] = (0.25, 0.5)
    save_budget: float = 0.5
    sink: int = 16
    recent: int = 64
    n_random: int = 2
    heldout_frac: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 2:
            raise InputError(f"n={self.n} needles cannot be split into fit and held-out parts", "use n >= 2")
        for b in (*self.budgets, self.save_budget):
            if not 0.0 <= b <= 1.0:
                raise InputError(f"budget {b} is not a share of KV heads in [0, 1]", "use e.g. 0.25")
        if not self.context_lengths:
            raise InputError("no context lengths", "give e.g. 256 512 1024")
        if self.sink < 0 or self.recent < 1 or self.n_random < 1:
            raise InputError("need sink >= 0, recent >= 1 and n_random >= 1",
                             f"got sink={self.sink}, recent={self.recent}, n_random={self.n_random}")


def run_kv(lm: Any, cfg: KVConfig | None = None, *, log: Any = None) -> tuple[ApplyResult, HeadArtifact]:
    """Score heads on fit needles, then measure needle accuracy and KV memory on held-out needles."""
    cfg = cfg or KVConfig()
    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    g = lm.geometry
    if lm.tokenizer is None:
        raise InputError(f"{lm.name} has no tokenizer", "kv needs a model with a tokenizer")
    lm.check_length(max(cfg.context_lengths) + 16)
    batch = needle(lm.tokenizer, n=cfg.n, seed=cfg.seed, context_lengths=cfg.context_lengths, depths=cfg.depths)
    per = len(cfg.context_lengths) * len(cfg.depths)
    groups = [i // per for i in range(len(batch))]
    fit_idx, held_idx = group_split(groups, heldout_frac=cfg.heldout_frac, seed=cfg.seed)
    say(f"retrieval scores on {len(fit_idx)} fit needle prompts")
    scores, n_ok = retrieval_scores(lm, batch, fit_idx)
    notes: list[str] = []
    if n_ok == 0:
        notes.append(f"{lm.name} retrieved none of the {len(fit_idx)} fit needle prompts: the retrieval scores are "
                     "all zero and the head choice is random (the model cannot do this task at these lengths)")
    kv_scores = kv_head_scores(scores, g.n_kv_heads)
    n_kv = g.n_layers * g.n_kv_heads
    lengths = torch.as_tensor(batch.meta["context_length"])
    ntok = torch.as_tensor(batch.meta["n_tokens"])
    rng = random.Random(cfg.seed)
    tables: dict[str, list[dict[str, Any]]] = {"needle accuracy (held-out needles)": [],
                                               "retrieval heads vs random heads (paired)": [],
                                               "KV memory kept (computed from the policy)": []}
    memory: list[dict[str, Any]] = []
    held_needles = sorted({groups[i] for i in held_idx})
    for length in cfg.context_lengths:
        rows = [i for i in held_idx if int(lengths[i]) == length]
        owner = np.asarray([groups[i] for i in rows])

        def per_needle(v: np.ndarray, owner: np.ndarray = owner) -> np.ndarray:
            return np.asarray([v[owner == nd].mean() for nd in held_needles])

        mean_tokens = float(ntok[rows].double().mean())
        say(f"context {length}: full cache")
        full_acc = per_needle(needle_correct(lm, batch, rows, None))
        t = tables["needle accuracy (held-out needles)"]
        t.append(effect_row("heldout", f"{length} tok: full cache", "accuracy", full_acc, seed=cfg.seed,
                            length=length, budget=1.0, kv_kept_share=1.0))
        none = KVPolicy(torch.zeros(g.n_layers, g.n_kv_heads, dtype=torch.bool), sink=cfg.sink, recent=cfg.recent)
        mem = kv_memory(lm, none, round(mean_tokens))
        acc = per_needle(needle_correct(lm, batch, rows, none))
        t.append(effect_row("heldout", f"{length} tok: no head full", "accuracy", acc, full_acc, seed=cfg.seed,
                            length=length, budget=0.0, **mem))
        for budget in cfg.budgets:
            k = round(budget * n_kv)
            say(f"context {length}: budget {budget} ({k} of {n_kv} KV heads full)")
            pol = policy_for(kv_scores, k, sink=cfg.sink, recent=cfg.recent, seed=cfg.seed)
            mem = kv_memory(lm, pol, round(mean_tokens))
            chosen = per_needle(needle_correct(lm, batch, rows, pol))
            draws = []
            for _ in range(cfg.n_random):
                full = torch.zeros(n_kv, dtype=torch.bool)
                full[rng.sample(range(n_kv), k)] = True
                draws.append(per_needle(needle_correct(lm, batch, rows, KVPolicy(full.view(g.n_layers, g.n_kv_heads),
                                                                                  sink=cfg.sink, recent=cfg.recent))))
            t.append(effect_row("heldout", f"{length} tok: retrieval heads full, budget {budget}", "accuracy", chosen,
                                full_acc, seed=cfg.seed, length=length, budget=budget, n_full=k, **mem))
            t.append(random_baseline_row("heldout", f"{length} tok: random heads full, budget {budget}", "accuracy",
                                         draws, full_acc, seed=cfg.seed, length=length, budget=budget, n_full=k, **mem))
            d = difference_row("heldout", f"{length} tok: retrieval - random, budget {budget}", "accuracy", chosen,
                               np.stack(draws).mean(0), seed=cfg.seed, length=length, budget=budget)
            tables["retrieval heads vs random heads (paired)"].append(d)
            if not d["significant"]:
                notes.append(f"not significant: {d['condition']} (difference {d['delta']:+.3f}, 95% CI "
                             f"[{d['delta_ci'][0]:+.3f}, {d['delta_ci'][1]:+.3f}], {len(held_needles)} needles)")
            memory.append({"length": length, "mean_tokens": mean_tokens, "budget": budget, **mem})
            tables["KV memory kept (computed from the policy)"].append(
                {"split": "policy", "condition": f"{length} tok ({mean_tokens:.0f} real): budget {budget}",
                 "metric": f"share of full KV ({mem['kv_bytes'] / 2**20:.1f} of {mem['kv_bytes_full'] / 2**20:.1f} MiB)",
                 "value": mem["kv_kept_share"], "n": 1, "length": length, "budget": budget, **mem})
    longest = max(cfg.context_lengths)
    row = next(i for i in held_idx if int(lengths[i]) == longest)
    prompt, answer = _rows(batch)[row]
    say(f"measuring the compact cache's bytes under generate at {longest} tokens")
    pols: dict[str, KVPolicy | None] = {"full cache": None}
    for budget in cfg.budgets:
        k = round(budget * n_kv)
        pols[f"retrieval heads full, budget {budget}"] = policy_for(kv_scores, k, sink=cfg.sink, recent=cfg.recent,
                                                                   seed=cfg.seed)
    measured = measured_memory(lm, prompt, len(answer), pols)
    full_bytes = measured[0]["kv_bytes"]
    tables["KV memory MEASURED under generate (compact cache)"] = [
        {"split": "generate", "condition": f"{longest} tok + {len(answer)} generated ({m['n_cached']} cached): "
         f"{m['condition']}", "metric": f"MiB held (computed {m['computed']['kv_bytes'] / 2**20:.2f}; positions "
         f"{m['meta_bytes'] / 2**20:.3f})", "value": m["kv_bytes"] / 2**20, "n": 1,
         "share_of_full_measured": m["kv_bytes"] / full_bytes, **{f"computed_{k}": v for k, v in m["computed"].items()},
         "kv_bytes": m["kv_bytes"], "meta_bytes": m["meta_bytes"]} for m in measured]
    n_save = round(cfg.save_budget * n_kv)
    pol = policy_for(kv_scores, n_save, sink=cfg.sink, recent=cfg.recent, seed=cfg.seed)
    full_heads = [HeadId(layer, h) for layer in range(g.n_layers) for h in range(g.n_heads)
                  if bool(pol.full[layer, g.kv_head_of(h)])]
    retrieval = [f"L{layer}H{h}" for layer in range(g.n_layers) for h in range(g.n_heads) if float(scores[layer, h]) > 0.1]
    chosen = {"save_budget": cfg.save_budget, "full_kv_heads": n_save, "of_kv_heads": n_kv, "sink": cfg.sink,
              "recent": cfg.recent, "retrieval_heads_over_0.1": retrieval, "fit_needles_retrieved": n_ok,
              "classification": "retrieval scores (not DuoAttention gates)", "gqa": "KV head full if any query head is"}
    data_info = {"needles": cfg.n, "fit_prompts": len(fit_idx), "heldout_prompts": len(held_idx),
                 "heldout_needles": len(held_needles), "context_lengths": list(cfg.context_lengths),
                 "depths": list(cfg.depths), "memory": memory, "measured_memory": measured}
    result = ApplyResult(kind=NAME, title=TITLE, paper=PAPER, model=lm.name, model_info=lm.model_info(),
                         config=asdict(cfg), heads=full_heads, chosen=chosen, tables=tables,
                         selection=[{"kv_head": f"L{i // g.n_kv_heads}KV{i % g.n_kv_heads}", "score": float(s)}
                                    for i, s in enumerate(kv_scores.flatten().tolist())],
                         head_scores=head_matrix_frame(scores, method=NAME, metric="retrieval_score", n=max(n_ok, 1)),
                         notes=notes, data=data_info, duration_s=time.perf_counter() - t0)
    artifact = HeadArtifact(kind=NAME, model=lm.name, geometry=geometry_of(g), heads=tuple(full_heads),
                            params={"sink": cfg.sink, "recent": cfg.recent, "budget": cfg.save_budget},
                            tensors={"full": pol.full.float(), "kv_scores": kv_scores.float(),
                                     "retrieval_scores": scores.float()},
                            info={"fit_needles_retrieved": n_ok, "classification": "retrieval scores"})
    return result, artifact
