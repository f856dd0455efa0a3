"""CHG and contrastive CHG end to end: data -> fit -> validation -> one atlas run.

```python
from headmine.atlas import write_job
from headmine.pipeline.gating import gate_model
report = gate_model(lm, data, CHGConfig.preset_for("quick"), prompts=prompt_set)   # prompt_set: optional
run_id = write_job(report, "atlas.db")
```
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headmine.atlas import AtlasRun, InputRow, JobResult, LabelRow, RunRecord, ScoreRow, utc_now
from headmine.atlas.artifacts import chg_artifacts, curve_artifacts, make_targeted_ablation
from headmine.causal.activation_patching import activation_patching
from headmine.causal.contrastive_gating import (
    ContrastConfig,
    ContrastResult,
    ContrastSplit,
    fit_contrastive,
    token_accuracy,
)
from headmine.causal.head_gating import (
    LABELS,
    CHGConfig,
    CHGResult,
    GatingData,
    Progress,
    default_ks,
    fit_chg,
    mediating_heads,
    patching_agreement,
    targeted_ablation,
)
from headmine.causal.metrics import AnswerMetric
from headmine.core.errors import InputError
from headmine.models.loading import LoadedModel

QUICK_KS = (1, 4, 16, 64)


@dataclass
class GateReport(JobResult):
    """A CHG run with its validation: ``ablation[name]`` = delta per k (``ks``), ``agreement`` = Welch test.

    Written as one ``chg`` run: scores, labels, inputs, G/G+/G-/F/N/I per seed, curves, validation.
    """

    model: str
    model_info: dict[str, Any]
    task: str
    data: GatingData
    result: CHGResult
    ks: tuple[int, ...] = ()
    ablation: dict[str, np.ndarray] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    patching_effects: torch.Tensor | None = None
    started_at: str | None = None
    duration_s: float = 0.0

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        res = self.result
        scores = {name: getattr(res, name).numpy() for name in ("G", "G_plus", "G_minus", "F", "N", "I")}
        artifacts: dict[str, Any] = chg_artifacts(scores, res.label_codes().numpy(), LABELS)
        artifacts.update(curve_artifacts(res.curves))
        artifacts["summary"] = {"shares": res.shares(), "seed_agreement": res.seed_agreement(), "status": res.status,
                                "message": res.message, "updates_done": res.updates_done, "fit_s": res.duration_s,
                                "converged": res.converged}
        if res.convergence is not None:
            artifacts["convergence"] = res.convergence.to_dict()
        if self.ablation:
            artifacts["targeted_ablation"] = make_targeted_ablation(self.ks, self.ablation)
        if self.agreement is not None:
            artifacts["patching_agreement"] = self.agreement
        if self.patching_effects is not None:
            artifacts["patching_effects"] = self.patching_effects.numpy().astype(np.float32)
        record = RunRecord(kind="chg", model=self.model, model_info=self.model_info, task=self.task,
                           params={**res.config.to_dict(), "data": self.data.source, "rows": len(self.data)},
                           seeds=res.seeds, started_at=self.started_at, duration_s=self.duration_s,
                           status=res.status, group_id=group_id, notes=res.message)
        # labels are findings only for a converged fit; otherwise the per-seed ``labels`` artifact and the
        # ``convergence`` verdict keep them as evidence, and no LabelRow is written
        return AtlasRun(record=record, scores=chg_score_rows(res), labels=chg_label_rows(res) if res.converged else [],
                        inputs=gating_input_rows(self.data, "train"), artifacts=artifacts)


def patching_effects(lm: LoadedModel, prompts: Any, *, max_rows: int = 256) -> torch.Tensor:
    """Per-head denoising activation patching [L, H] (``causal.activation_patching``): the corrupted run
    with one head's z taken from the clean run (all positions); mean change of the task metric over prompts
    (the paper's CMA: recovery of the clean behaviour)."""
    if not prompts.has_corrupted:
        raise InputError(f"task {prompts.task!r} has no corrupted prompts", "agreement needs clean/corrupted pairs")
    clean, corr = prompts.clean_batch(), prompts.corrupted_batch()
    metric = AnswerMetric.from_batch(clean)
    eff = activation_patching(lm, clean.input_ids, clean.attention_mask, corr.input_ids, corr.attention_mask, metric,
                              direction="denoising", max_rows=max_rows)
    return eff.effects


def gate_model(lm: LoadedModel, data: GatingData, config: CHGConfig | None = None, *, task: str | None = None,
               prompts: Any = None, ablation: bool = True, agreement: bool = True,
               progress: Progress | None = None) -> GateReport:
    """Fit CHG, run the targeted-ablation check on seed 0 and, when ``prompts`` (a PromptSet) has
    clean/corrupted pairs, the agreement with activation patching (Welch t-test on max-over-seeds F)."""
    cfg = config or CHGConfig()
    started = utc_now()
    t0 = time.perf_counter()
    res = fit_chg(lm, data, cfg, progress=progress)
    g = lm.geometry
    report = GateReport(model=lm.name, model_info=lm.model_info(), task=task or data.source, data=data,
                        result=res, started_at=started)
    if ablation:
        ks = cfg.ablation_ks or (QUICK_KS if cfg.preset == "quick" else default_ks(g.n_layers * g.n_heads))
        ks = tuple(k for k in ks if k <= g.n_layers * g.n_heads)
        ev = data.subset(cfg.eval_rows)
        report.ks = ks
        report.ablation = targeted_ablation(lm, ev, res.G_plus[0], {"F": res.F[0], "I": res.I[0], "N": res.N[0]},
                                            ks, micro_batch=cfg.micro_batch)
        if progress is not None:
            progress("ablation", 1, 1, float("nan"))
    if agreement and prompts is not None and getattr(prompts, "has_corrupted", False):
        effects = patching_effects(lm, prompts)
        report.patching_effects = effects
        med = mediating_heads(effects)
        report.agreement = {**patching_agreement(res.F.max(0).values, med),
                            "mediating": [[h.layer, h.head] for h in med]}
    report.duration_s = time.perf_counter() - t0
    return report


def chg_score_rows(res: CHGResult, method: str = "chg") -> list[ScoreRow]:
    """Per head: each score's mean over seeds (stderr when K > 1) and the across-seed aggregates."""
    k = res.G.shape[0]
    rows = []
    mats = {"G": res.G, "G_plus": res.G_plus, "G_minus": res.G_minus, "F": res.F, "N": res.N, "I": res.I}
    for name, m in mats.items():
        mean, sd = m.mean(0), m.std(0) if k > 1 else torch.zeros_like(m[0])
        for (layer, head), value in np.ndenumerate(mean.numpy()):
            rows.append(ScoreRow(layer=layer, head=head, method=method, metric=name, value=float(value), n=k,
                                 stderr=float(sd[layer, head]) / max(k, 1) ** 0.5 if k > 1 else None))
    agg = res.aggregate()
    for name, m in agg.items():
        for (layer, head), value in np.ndenumerate(m.float().numpy()):
            rows.append(ScoreRow(layer=layer, head=head, method=method, metric=name, value=float(value), n=k))
    return rows


def head_labels(res: CHGResult) -> list[tuple[int, int, str, float, int]]:
    """(layer, head, label, score, seeds with that label) per labelled head: its most frequent per-seed
    label (ties: the first in :data:`LABELS`) and that label's score (F, N, I; F for "inconsistent")
    averaged over seeds. Unclassified heads are left out."""
    codes = res.label_codes()
    scores = {0: res.F, 1: res.N, 2: res.I, 3: res.F}
    out = []
    for layer in range(codes.shape[1]):
        for head in range(codes.shape[2]):
            counts = torch.bincount(codes[:, layer, head], minlength=len(LABELS))
            best = int(counts.argmax())
            if best == 4:
                continue
            out.append((layer, head, LABELS[best], float(scores[best][:, layer, head].mean()), int(counts[best])))
    return out


def chg_label_rows(res: CHGResult, method: str = "chg") -> list[LabelRow]:
    """One label per head (:func:`head_labels`), noted with the seed count (always / any). Written only
    for a converged fit (see :meth:`GateReport.to_atlas`)."""
    k = res.label_codes().shape[0]
    return [LabelRow(layer=layer, head=head, head_type=lab, method=method, value=value, threshold=res.config.threshold,
                     note=f"{'always' if c == k else 'any'}: {c}/{k} seeds")
            for layer, head, lab, value, c in head_labels(res)]


def gating_input_rows(data: GatingData, role: str) -> list[InputRow]:
    """The exact token ids of each row, with the positions the loss is on."""
    out = []
    for i in range(len(data)):
        n = int(data.attention_mask[i].sum())
        ids = data.input_ids[i, :n].tolist()
        targets = data.loss_mask[i, :n].nonzero().flatten().tolist()
        out.append(InputRow(idx=i, token_ids=ids, role=role, text=None if data.texts is None else data.texts[i],
                            meta={"target_positions": targets}))
    return out


@dataclass
class ContrastReport(JobResult):
    """A contrastive CHG fit with its accuracies; written as one ``chg_contrast`` run (gate scores,
    gates per seed, curves, accuracies, the fit rows and the held-out rows).

    ``accuracy``: mean per-problem token accuracy of each format without / with the gates (seed 0) on
    the held-out rows (``retain_before`` ... ``forget_after``, the headline, labelled by ``heldout``
    and ``n_heldout``) and on the fit rows (``fit_retain_before`` ...).
    """

    model: str
    model_info: dict[str, Any]
    split: ContrastSplit
    result: ContrastResult
    accuracy: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    duration_s: float = 0.0

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        res = self.result
        sp = self.split
        k = res.G.shape[0]
        mean = res.G.mean(0).numpy()
        scores = [ScoreRow(layer=l_, head=h, method="chg_contrast", metric="G", value=float(v), n=k)
                  for (l_, h), v in np.ndenumerate(mean)]
        scores += [ScoreRow(layer=l_, head=h, method="chg_contrast", metric="removed", value=float(1 - v), n=k)
                   for (l_, h), v in np.ndenumerate(mean)]
        artifacts: dict[str, Any] = {"G": res.G.numpy().astype(np.float32), "accuracy": self.accuracy,
                                     "summary": {"status": res.status, "message": res.message,
                                                 "updates_done": res.updates_done, "heldout": sp.heldout}}
        artifacts.update(curve_artifacts(res.curves))
        record = RunRecord(kind="chg_contrast", model=self.model, model_info=self.model_info,
                           task=f"retain={sp.retain.source};forget={sp.forget.source}",
                           params={**res.config.to_dict(), "rows": len(sp.retain), "heldout": sp.heldout,
                                   "heldout_rows": len(sp.eval_retain)},
                           seeds=[res.config.seed + i for i in range(k)], started_at=self.started_at,
                           duration_s=self.duration_s, status=res.status, group_id=group_id, notes=res.message)
        inputs = (gating_input_rows(sp.retain, "retain") + gating_input_rows(sp.forget, "forget")
                  + gating_input_rows(sp.eval_retain, "heldout_retain") + gating_input_rows(sp.eval_forget, "heldout_forget"))
        return AtlasRun(record=record, scores=scores, inputs=inputs, artifacts=artifacts)


def contrast_model(lm: LoadedModel, split: ContrastSplit, config: ContrastConfig | None = None, *,
                   progress: Progress | None = None) -> ContrastReport:
    """Fit contrastive CHG on the split's fit rows and measure mean per-problem token accuracy of both
    formats with and without the gates (seed 0): on the held-out rows (the headline) and on the fit rows."""
    started = utc_now()
    t0 = time.perf_counter()
    res = fit_contrastive(lm, split.retain, split.forget, config, progress=progress)
    gates = res.G[0]
    acc: dict[str, Any] = {"heldout": split.heldout, "n_heldout": len(split.eval_retain), "n_fit": len(split.retain)}
    for prefix, retain, forget in (("", split.eval_retain, split.eval_forget), ("fit_", split.retain, split.forget)):
        for name, data in (("retain", retain), ("forget", forget)):
            acc[f"{prefix}{name}_before"] = float(token_accuracy(lm, data).mean())
            acc[f"{prefix}{name}_after"] = float(token_accuracy(lm, data, gates).mean())
    return ContrastReport(model=lm.name, model_info=lm.model_info(), split=split, result=res,
                          accuracy=acc, started_at=started, duration_s=time.perf_counter() - t0)
