"""An inference-time mitigation of final-layer suppression, chosen on training facts, tested on held-out ones.

A :class:`Mitigation` rescales heads (through the intervention engine, at every position, so it
works unchanged during generation), rescales MLP outputs, and/or removes the projection of an MLP's
output on a fixed direction (e.g. the final MLP's mean output at the answer position: the
"intercept"). Hooks come from :mod:`headmine.capture.hooks`.

Selection (:func:`choose_mitigation`, our choice; the paper's exact fix is unknown, METHODS.md §2.5):
candidates are built from the final layer only (each head and the measured suppressor heads scaled
by 0 or 0.5, the MLP scaled by 0 or 0.5, the MLP's mean answer-position direction removed, the
whole layer skipped). Each is scored on the **training** facts by the mean change in log p(answer);
candidates whose cost (mean next-token loss increase on a corpus sample) exceeds ``max_cost`` are
excluded; if no candidate improves the training score the result is the identity ("no improvement").
:func:`evaluate_mitigation` then reports top-1 and answer probability before/after on held-out
facts and held-out relations with paired bootstrap confidence intervals, and the corpus cost.

Splits come first (:func:`split_relation_facts`): the facts are split before any prompt is built,
and each split's prompts (few-shot demonstrations and subject swaps included) use only that split's
facts, so no held-out fact reaches the prompts the mitigation (suppressor heads, candidate,
direction) is chosen on. :func:`split_facts` splits an already built batch by subject instead.

Saved as ``<stem>.json`` (everything but tensors) plus ``<stem>.safetensors`` (directions); no pickle.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from headmine.capture import CaptureSpec, run_capture
from headmine.capture.hooks import HookSpec, hooks
from headmine.causal import Scale, intervening
from headmine.causal.factual_recall.common import (
    answer_stats,
    as_list,
    bootstrap_ci,
    check_fact_batch,
    end_logits,
    sub_batches,
)
from headmine.causal.metrics import next_token_loss
from headmine.core.errors import InputError, TaskError
from headmine.core.ids import HeadId, Site
from headmine.models.loading import LoadedModel
from headmine.tasks.base import TokenBatch


@dataclass(frozen=True)
class Mitigation:
    """Head scales, MLP scales and MLP-direction removals; the identity when all are empty."""

    name: str = "none"
    head_scales: tuple[tuple[HeadId, float], ...] = ()
    mlp_scales: tuple[tuple[int, float], ...] = ()
    remove_directions: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d_model] (raw MLP output space)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_identity(self) -> bool:
        return not (self.head_scales or self.mlp_scales or self.remove_directions)

    def save(self, path: str | Path) -> tuple[Path, Path | None]:
        """Write ``<stem>.json`` (+ ``<stem>.safetensors`` when there are directions)."""
        p = Path(path)
        stem = p.with_suffix("")
        doc = {"name": self.name, "head_scales": [[h.layer, h.head, f] for h, f in self.head_scales],
               "mlp_scales": [[layer, f] for layer, f in self.mlp_scales],
               "remove_directions": sorted(self.remove_directions), "info": self.info}
        js = stem.with_suffix(".json")
        js.write_text(json.dumps(doc, indent=2, default=float))
        st = None
        if self.remove_directions:
            st = stem.with_suffix(".safetensors")
            save_file({f"direction.{k}": v.detach().float().contiguous().cpu() for k, v in self.remove_directions.items()}, str(st))
        return js, st

    @classmethod
    def load(cls, path: str | Path) -> Mitigation:
        p = Path(path)
        js = p.with_suffix(".json")
        if not js.exists():
            raise InputError(f"no mitigation file {js}", "save one with Mitigation.save or `headmine factual --save`")
        doc = json.loads(js.read_text())
        dirs: dict[int, torch.Tensor] = {}
        if doc.get("remove_directions"):
            tensors = load_file(str(js.with_suffix(".safetensors")))
            dirs = {int(k): tensors[f"direction.{k}"] for k in doc["remove_directions"]}
        return cls(name=doc["name"], head_scales=tuple((HeadId(a, b), float(f)) for a, b, f in doc["head_scales"]),
                   mlp_scales=tuple((int(a), float(f)) for a, f in doc["mlp_scales"]), remove_directions=dirs,
                   info=doc.get("info", {}))


@contextmanager
def mitigated(lm: LoadedModel, mitigation: Mitigation) -> Iterator[None]:
    """Apply ``mitigation`` to every forward pass in the block (``lm.model.generate`` included)."""
    for h, _ in mitigation.head_scales:
        lm.geometry.check_head(h.layer, h.head)
    with ExitStack() as stack:
        by_factor: dict[float, list[HeadId]] = {}
        for h, f in mitigation.head_scales:
            by_factor.setdefault(f, []).append(h)
        ivs = [Scale(heads=tuple(hs), factor=f) for f, hs in by_factor.items()]
        if ivs:
            stack.enter_context(intervening(lm, ivs))
        specs = []
        layers = {layer for layer, _ in mitigation.mlp_scales} | set(mitigation.remove_directions)
        scales = dict(mitigation.mlp_scales)
        for layer in sorted(layers):
            lm.geometry.check_layer(layer)
            mlp = lm.adapter.mlp(layer)
            if mlp is None:
                raise InputError(f"{lm.name} exposes no MLP module", "MLP mitigations need an adapter with mlp_name")
            specs.append(HookSpec(mlp, "forward",
                                  _mlp_hook(scales.get(layer, 1.0), mitigation.remove_directions.get(layer))))
        stack.enter_context(hooks(specs))
        yield


def _mlp_hook(factor: float, direction: torch.Tensor | None):
    def fn(module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output
        if direction is not None:
            u = direction.to(out.device, out.dtype)
            u = u / u.norm().clamp_min(1e-12)
            out = out - (out @ u)[..., None] * u
        out = out * factor
        return (out, *output[1:]) if isinstance(output, tuple) else out

    return fn


# --------------------------------------------------------------------------- measuring
def answer_scores(lm: LoadedModel, batch: TokenBatch, mitigation: Mitigation | None = None,
                  *, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per prompt: answer probability, log-probability and top-1 (bool), optionally under ``mitigation``."""
    out: dict[str, list[torch.Tensor]] = {"prob": [], "logprob": [], "top1": []}
    with ExitStack() as stack:
        if mitigation is not None:
            stack.enter_context(mitigated(lm, mitigation))
        for sub in sub_batches(batch, batch_size):
            with torch.no_grad():
                logits = end_logits(lm, sub.input_ids, sub.attention_mask, sub.meta["end_pos"])
            p, r, lp = answer_stats(logits, sub.meta["target_id"])
            out["prob"].append(p.cpu())
            out["logprob"].append(lp.cpu())
            out["top1"].append((r == 0).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def corpus_loss(lm: LoadedModel, corpus_ids: torch.Tensor, mitigation: Mitigation | None = None,
                *, batch_size: int = 4) -> float:
    """Mean next-token cross-entropy (nats) over ``corpus_ids`` [n_chunks, T], optionally mitigated."""
    if corpus_ids.numel() == 0:
        raise InputError("the corpus sample is empty", "give at least one chunk of unrelated text")
    with ExitStack() as stack:
        if mitigation is not None:
            stack.enter_context(mitigated(lm, mitigation))
        return next_token_loss(lm, corpus_ids, batch_size=batch_size)


# --------------------------------------------------------------------------- splits, selection, evaluation
@dataclass(frozen=True)
class FactSplits:
    train: TokenBatch
    heldout_facts: TokenBatch
    heldout_relations: TokenBatch | None


FACT_SPLITS = ("train", "heldout_facts", "heldout_relations")


def split_relation_facts(relations: Mapping[str, Sequence[tuple[str, str]]], *, heldout_relations: Sequence[str],
                         test_frac: float = 0.4, seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """Split (subject, answer) facts before any prompt is built: ``{split: {relation: subjects}}``
    for the splits ``train``, ``heldout_facts`` and ``heldout_relations`` (:data:`FACT_SPLITS`).

    A held-out relation goes whole to ``heldout_relations``; every other relation gives a share
    ``test_frac`` of its subjects (at least one, at most all but one) to ``heldout_facts``. Each
    relation's split depends only on its own facts, ``seed`` and its name (a string seed), so adding,
    removing or changing another relation, held out or not, leaves it unchanged.
    """
    unknown = set(heldout_relations) - set(relations)
    if unknown:
        raise TaskError(f"held-out relations {sorted(unknown)} are not among the relations",
                        f"choose from {sorted(relations)}")
    out: dict[str, dict[str, list[str]]] = {name: {} for name in FACT_SPLITS}
    for rel, pairs in relations.items():
        subjects = sorted({s for s, _ in pairs})
        if rel in heldout_relations:
            out["heldout_relations"][rel] = subjects
            continue
        if len(subjects) < 2:
            raise TaskError(f"relation {rel!r} has {len(subjects)} subject(s): too few to hold some out",
                            "give every relation that is not held out at least two facts")
        random.Random(f"{seed}:{rel}").shuffle(subjects)
        n_test = min(len(subjects) - 1, max(1, round(test_frac * len(subjects))))
        out["heldout_facts"][rel] = sorted(subjects[:n_test])
        out["train"][rel] = sorted(subjects[n_test:])
    if not out["train"]:
        raise TaskError("every relation is held out: nothing to choose the mitigation on",
                        "hold out fewer relations")
    return out


def split_facts(batch: TokenBatch, *, heldout_relations: Sequence[str], test_frac: float = 0.4, seed: int = 0) -> FactSplits:
    """Hold out whole relations, and a share of the facts (by subject) of the other relations.

    All prompts about one subject of one relation (e.g. its zero- and few-shot variants) land in the same split.
    """
    check_fact_batch(batch)
    rel = as_list(batch.meta["relation"])
    unknown = set(heldout_relations) - set(rel)
    if unknown:
        raise TaskError(f"held-out relations {sorted(unknown)} are not in the batch", f"choose from {sorted(set(rel))}")
    span = batch.meta["subject_span"]
    keys = [(r, tuple(batch.input_ids[i, int(span[i, 0]):int(span[i, 1])].tolist()), int(batch.meta["target_id"][i]))
            for i, r in enumerate(rel)]
    rng = random.Random(seed)
    test_keys: set[tuple[Any, ...]] = set()
    for r in sorted(set(rel) - set(heldout_relations)):
        facts = sorted({k for k in keys if k[0] == r})
        rng.shuffle(facts)
        test_keys.update(facts[: max(1, round(test_frac * len(facts)))])
    train = [i for i, k in enumerate(keys) if k[0] not in heldout_relations and k not in test_keys]
    test = [i for i, k in enumerate(keys) if k in test_keys]
    held = [i for i, k in enumerate(keys) if k[0] in heldout_relations]
    if not train or not test:
        raise TaskError("too few facts to split into training and held-out facts", "give more facts per relation")
    return FactSplits(batch.select(train), batch.select(test), batch.select(held) if held else None)


def candidate_mitigations(lm: LoadedModel, train: TokenBatch, suppressor_heads: Sequence[HeadId] = (),
                          *, layer: int | None = None, factors: Sequence[float] = (0.0, 0.5)) -> list[Mitigation]:
    """The candidate set described in the module docstring (final layer unless ``layer``; scale ``factors``)."""
    g = lm.geometry
    layer = g.n_layers - 1 if layer is None else layer
    cands = []
    for f in factors:
        for h in range(g.n_heads):
            cands.append(Mitigation(f"scale L{layer}H{h} x{f}", head_scales=((HeadId(layer, h), f),)))
        sup = tuple(h for h in suppressor_heads if h.layer == layer)
        if len(sup) > 1:
            cands.append(Mitigation(f"scale suppressors {'+'.join(map(str, sup))} x{f}", head_scales=tuple((h, f) for h in sup)))
        cands.append(Mitigation(f"scale mlp{layer} x{f}", mlp_scales=((layer, f),)))
    cands.append(Mitigation(f"skip layer {layer}", head_scales=tuple((HeadId(layer, h), 0.0) for h in range(g.n_heads)),
                            mlp_scales=((layer, 0.0),)))
    # the final MLP's mean raw output at the answer position (its input-independent part)
    acc = torch.zeros(g.d_model)
    for sub in sub_batches(train, 16):
        rec = run_capture(lm, CaptureSpec(sites=frozenset({Site.MLP_OUT}), layers=(layer,),
                                          query_positions=sub.meta["end_pos"], keep_logits=False), sub.input_ids, sub.attention_mask)
        acc += rec.mlp_out[layer][:, 0].float().sum(0).cpu()
    cands.append(Mitigation(f"remove mlp{layer} mean direction", remove_directions={layer: acc / len(train)}))
    return cands


def choose_mitigation(
    lm: LoadedModel,
    train: TokenBatch,
    corpus_ids: torch.Tensor,
    *,
    candidates: Sequence[Mitigation] | None = None,
    suppressor_heads: Sequence[HeadId] = (),
    max_cost: float = 0.05,
    max_train: int | None = 48,
    seed: int = 0,
    factors: Sequence[float] = (0.0, 0.5),
) -> tuple[Mitigation, list[dict[str, Any]]]:
    """Pick the candidate with the best mean training change of log p(answer) within ``max_cost`` nats/token.

    Returns the chosen mitigation (the identity when nothing improves) and one row per candidate.
    ``max_train`` subsamples the training prompts used for scoring (cost control).
    """
    check_fact_batch(train)
    if max_train is not None and len(train) > max_train:
        train = train.select(sorted(random.Random(seed).sample(range(len(train)), max_train)))
    cands = list(candidates) if candidates is not None else candidate_mitigations(lm, train, suppressor_heads, factors=factors)
    base = answer_scores(lm, train)
    base_loss = corpus_loss(lm, corpus_ids)
    rows: list[dict[str, Any]] = []
    for c in cands:
        s = answer_scores(lm, train, c)
        cost = corpus_loss(lm, corpus_ids, c) - base_loss
        rows.append({"name": c.name, "train_dlogp": float((s["logprob"] - base["logprob"]).mean()),
                     "train_dtop1": float(s["top1"].float().mean() - base["top1"].float().mean()),
                     "train_dprob": float((s["prob"] - base["prob"]).mean()), "cost": cost,
                     "allowed": cost <= max_cost})
    allowed = [(r, c) for r, c in zip(rows, cands, strict=True) if r["allowed"] and r["train_dlogp"] > 0]
    if not allowed:
        return Mitigation("none", info={"reason": "no candidate improved training log p(answer) within the cost budget",
                                        "max_cost": max_cost}), rows
    best_row, best = max(allowed, key=lambda rc: rc[0]["train_dlogp"])
    info = {**best.info, "selected_on": "train", "train_dlogp": best_row["train_dlogp"], "cost_selection": best_row["cost"],
            "max_cost": max_cost, "model": lm.name}
    return Mitigation(best.name, best.head_scales, best.mlp_scales, best.remove_directions, info), rows


def evaluate_mitigation(lm: LoadedModel, mitigation: Mitigation, splits: dict[str, TokenBatch], corpus_ids: torch.Tensor,
                        *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Before/after top-1 and answer probability per split with paired bootstrap 95% CIs of the changes, and the cost."""
    out: dict[str, Any] = {"mitigation": mitigation.name}
    for name, batch in splits.items():
        before = answer_scores(lm, batch)
        after = answer_scores(lm, batch, mitigation)
        dp = bootstrap_ci(after["prob"] - before["prob"], n_boot=n_boot, seed=seed)
        dt = bootstrap_ci(after["top1"].float() - before["top1"].float(), n_boot=n_boot, seed=seed)
        dl = bootstrap_ci(after["logprob"] - before["logprob"], n_boot=n_boot, seed=seed)
        out[name] = {"n": len(batch), "top1_before": float(before["top1"].float().mean()),
                     "top1_after": float(after["top1"].float().mean()), "dtop1": dt[0], "dtop1_ci": [dt[1], dt[2]],
                     "prob_before": float(before["prob"].mean()), "prob_after": float(after["prob"].mean()),
                     "dprob": dp[0], "dprob_ci": [dp[1], dp[2]], "dlogp": dl[0], "dlogp_ci": [dl[1], dl[2]]}
    base = corpus_loss(lm, corpus_ids)
    out["corpus_loss_before"] = base
    out["corpus_loss_after"] = corpus_loss(lm, corpus_ids, mitigation)
    out["cost"] = out["corpus_loss_after"] - base
    return out
