"""Causal confirmation of a scan: mean-ablate each detector's top-k heads vs k random heads.

Each detector names the task that defines its head type (``CAUSAL_TASKS``) and a metric where
higher is worse: next-token loss on the second repeat (induction family, previous-token, positional, local), on
natural text (sink, copy suppression), on successor positions (successor), on
the needle's answer tokens given the prompt (retrieval), or minus the IOI logit difference (name
movers). Ablation = mean ablation at z (mean over the evaluation batch's real positions), through
``headmine.causal``. Random draws (``n_random`` sets of k heads, fixed seed) come from the heads
outside the top-k of EVERY detector on the same task (so a random set is not secretly another
candidate set, which matters in small models where half the heads are specialised), and are
shared by those detectors; when fewer than k such heads exist, each detector draws from the
heads outside its own top-k. Sink heads are also tested for dormancy:
all of a head's attention moved to the first token (z := v at position 0), KL to the clean run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from headmine.capture import CaptureSpec, run_capture
from headmine.causal import Mean, PatchFrom, run_with_interventions
from headmine.core.ids import HeadId, Site
from headmine.core.tables import scores_frame
from headmine.models.loading import LoadedModel
from headmine.tasks.base import PROBES, TokenBatch, pad_batch, pad_id

if TYPE_CHECKING:
    from headmine.pipeline.scan import CausalCheck, Progress, ScanResult

# detector -> (causal task, expected sign of the ablation effect)
CAUSAL_TASKS: dict[str, tuple[str, int]] = {
    "induction": ("repeated_tokens", 1),
    "prefix_matching": ("repeated_tokens", 1),
    "duplicate_token": ("repeated_tokens", 1),
    "copying": ("repeated_tokens", 1),
    "previous_token": ("repeated_tokens", 1),
    "positional": ("repeated_tokens", 1),
    "local": ("repeated_tokens", 1),
    "attention_sink": ("natural_text", 1),
    "copy_suppression": ("natural_text", 1),
    "copy_suppression_qk": ("natural_text", 1),
    "name_mover": ("ioi", 1),
    "name_copy": ("ioi", 1),
    "negative_name_copy": ("ioi", -1),
    "successor": ("ordinal", 1),
    "retrieval": ("needle", 1),
}
METRIC_NAMES = {
    "repeated_tokens": "loss_second_repeat",
    "natural_text": "loss_text",
    "ioi": "minus_logit_diff",
    "ordinal": "loss_successor",
    "needle": "loss_answer",
}
CAUSAL_PARAMS: dict[str, dict[str, Any]] = {
    "repeated_tokens": {"seq_len": 40},
    "natural_text": {"seq_len": 64},
    "ioi": {},
    "ordinal": {"length": 6},
    "needle": {"n": 1, "context_lengths": (192,), "depths": (0.25, 0.75)},
}


def _token_loss(logits: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ids[:, t] from logits[:, t-1] where weight[:, t] is 1."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1)
    w = weight[:, 1:].to(nll.dtype).to(nll.device)
    return (nll * w).sum() / w.sum().clamp_min(1)


def _eval_batch(lm: LoadedModel, task: str, n: int, seed: int,
                scan_params: dict[str, Any] | None = None) -> tuple[TokenBatch, Callable[[torch.Tensor], float]]:
    """The evaluation batch of a causal task and its metric (higher = worse) on logits.

    A ``seq_len`` the scan used for the same probe is kept (a toy model trained on short
    sequences is evaluated where it was trained)."""
    tok = lm.tokenizer
    params = dict(CAUSAL_PARAMS[task])
    if scan_params and "seq_len" in scan_params and "seq_len" in params:
        params["seq_len"] = int(scan_params["seq_len"])
    if task == "needle":
        probe = PROBES.get("needle")(tok, seed=seed, **params)
        rows, weights = [], []
        for i in range(len(probe)):
            ids = probe.input_ids[i, : int(probe.lengths[i])].tolist()
            ans = list(probe.meta["answer_ids"][i])
            rows.append(ids + ans)
            weights.append([0] * len(ids) + [1] * len(ans))
        input_ids, mask = pad_batch(rows, pad_id(tok))
        w = torch.zeros_like(input_ids)
        for i, ws in enumerate(weights):
            w[i, : len(ws)] = torch.tensor(ws)
        batch = TokenBatch(input_ids=input_ids, attention_mask=mask, task="needle_answer", params=probe.params)
        return batch, lambda logits: float(_token_loss(logits, input_ids, w))
    batch = PROBES.get(task)(tok, n=n, seed=seed, **params)
    ids, mask = batch.input_ids, batch.attention_mask
    if task == "repeated_tokens":
        w = torch.zeros_like(ids)
        pos = list(batch.meta["first_repeat_positions"])[1:]
        w[:, pos] = 1
        return batch, lambda logits: float(_token_loss(logits, ids, w))
    if task == "natural_text":
        w = mask.clone()
        if batch.meta.get("has_bos"):
            w[:, :2] = 0  # first real token has no context
        return batch, lambda logits: float(_token_loss(logits, ids, w))
    if task == "ordinal":
        w = torch.zeros_like(ids)  # every item after the first is predicted (teacher forcing)
        for b, pos in enumerate(batch.meta["item_positions"]):
            w[b, list(pos)[1:]] = 1
        return batch, lambda logits: float(_token_loss(logits, ids, w))
    if task == "ioi":
        end = torch.as_tensor(batch.meta["END"]).long()
        io = torch.as_tensor(batch.meta["io_id"]).long()
        s = torch.as_tensor(batch.meta["s_id"]).long()
        rows = torch.arange(len(batch))

        def ioi_metric(logits: torch.Tensor) -> float:
            last = logits[rows, end].float()
            return float(-(last[rows, io] - last[rows, s]).mean())

        return batch, ioi_metric
    raise ValueError(task)


def _top_heads(result: ScanResult, name: str, k: int) -> list[HeadId]:
    df = result.top(name, k)
    return [HeadId(int(r.layer), int(r.head)) for r in df.itertuples()]


def run_causal_checks(
    lm: LoadedModel, result: ScanResult, *, progress: Progress | None = None
) -> tuple[dict[str, CausalCheck], pd.DataFrame, dict[str, list[tuple[int, ...]]]]:
    """Checks per detector, their score rows, and the exact token ids of every evaluation batch."""
    from headmine.pipeline.scan import CausalCheck

    cfg = result.config
    g = lm.geometry
    all_heads = g.heads()
    k = cfg.top_k or max(1, min(5, len(all_heads) // 8))
    by_task: dict[str, list[str]] = {}
    for d in result.detectors:
        if d.name in CAUSAL_TASKS and not result.detector_scores(d.name).value.isna().all():
            by_task.setdefault(CAUSAL_TASKS[d.name][0], []).append(d.name)
    checks: dict[str, CausalCheck] = {}
    rows: list[dict[str, Any]] = []
    inputs: dict[str, list[tuple[int, ...]]] = {}
    total = sum(len(v) + cfg.n_random + 1 for v in by_task.values())
    done = 0
    for task, names in by_task.items():
        batch, metric = _eval_batch(lm, task, cfg.causal_n, cfg.seed + 1000, result.probe_params.get(task))
        ids, mask = batch.input_ids, batch.attention_mask
        inputs[f"causal:{task}"] = [tuple(int(t) for t in r[m.bool()].tolist()) for r, m in zip(ids, mask, strict=True)]
        ref = run_capture(lm, CaptureSpec(sites=frozenset({Site.Z}), keep_logits=True), ids, mask)
        clean = metric(ref.logits)
        mean_all = Mean.from_record(ref, all_heads)
        values = mean_all.values
        del ref

        def effect(heads: list[HeadId], ids: torch.Tensor = ids, mask: torch.Tensor = mask,
                   values: Any = values, metric: Callable[[torch.Tensor], float] = metric,
                   clean: float = clean) -> float:
            logits = run_with_interventions(lm, ids, mask, [Mean(heads=tuple(heads), values=values)])
            return metric(logits) - clean

        rng = random.Random(cfg.seed + 7)
        tops = {name: _top_heads(result, name, k) for name in names}
        excluded = {h for hs in tops.values() for h in hs}
        pool = [h for h in all_heads if h not in excluded]
        shared: list[float] | None = None
        if len(pool) >= k:
            shared = [effect(rng.sample(pool, k)) for _ in range(cfg.n_random)]
        done += cfg.n_random + 1
        if progress:
            progress("causal", done, total)
        for name in names:
            random_effects = shared
            if random_effects is None:  # few heads: draw outside this detector's own top-k
                own = [h for h in all_heads if h not in tops[name]]
                random_effects = [effect(rng.sample(own, min(k, len(own)))) for _ in range(cfg.n_random)]
            top_effect = effect(tops[name])
            done += 1
            if progress:
                progress("causal", done, total)
            check = CausalCheck(detector=name, metric=METRIC_NAMES[task], heads=[str(h) for h in tops[name]],
                                k=len(tops[name]), clean=clean, topk_effect=top_effect,
                                random_effects=random_effects, expected_sign=CAUSAL_TASKS[name][1])
            checks[name] = check
            for metric_name, value in (("clean", clean), ("topk_effect", top_effect),
                                       ("random_mean", check.random_mean), ("random_std", check.random_std),
                                       ("random_max", max(random_effects)), ("confirmed", float(check.confirmed)),
                                       ("k", float(check.k))):
                rows.append({"component": "set", "layer": -1, "head": -1, "method": f"causal:{name}",
                             "metric": f"{METRIC_NAMES[task]}:{metric_name}" if metric_name != "k" else "k",
                             "value": value, "n": len(batch)})
        if task == "natural_text" and "attention_sink" in names:
            rows.extend(_dormancy(lm, result, ids, mask, cfg.dormant_top))
    extra = scores_frame(rows) if rows else pd.DataFrame(columns=["component", "layer", "head", "method", "metric", "value", "n", "stderr"])
    return checks, extra, inputs


def _dormancy(lm: LoadedModel, result: ScanResult, ids: torch.Tensor, mask: torch.Tensor, top: int) -> list[dict[str, Any]]:
    """KL(clean || head's attention moved to the first token) for the strongest sink heads."""
    from headmine.detectors.attention_sink import EPSILON

    df = result.top("attention_sink", top)
    heads = [HeadId(int(r.layer), int(r.head)) for r in df.itertuples() if r.value > EPSILON]
    if not heads:
        return []
    g = lm.geometry
    layers = tuple(sorted({h.layer for h in heads}))
    ref = run_capture(lm, CaptureSpec(sites=frozenset({Site.V}), layers=layers, keep_logits=True), ids, mask)
    clean_lp = torch.log_softmax(ref.logits.float(), -1)
    m = mask.bool()
    out = []
    for h in heads:
        v0 = ref.v[h.layer][:, 0, g.kv_head_of(h.head)]  # [batch, d_head]
        src = torch.zeros(ids.shape[0], ids.shape[1], g.n_heads, g.d_head)
        src[:, :, h.head] = v0[:, None, :]
        logits = run_with_interventions(lm, ids, mask, [PatchFrom(heads=(h,), source={h.layer: src})])
        lp = torch.log_softmax(logits.float(), -1)
        kl = (clean_lp.exp() * (clean_lp - lp)).sum(-1)[m].mean()
        out.append({"component": "head", "layer": h.layer, "head": h.head, "method": "dormant",
                    "metric": "kl_move_to_first", "value": float(kl), "n": int(m.sum())})
    return out
