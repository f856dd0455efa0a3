"""What a scan is asked (``ScanConfig``) and what it returns (``ScanResult`` with its ``CausalCheck``s).

A ``ScanResult`` is a ``JobResult``: ``write_job(result, "atlas.db")`` stores it as ONE atlas run
(scores, labels, exact inputs, causal details, attention examples), atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from headmine import catalog
from headmine.atlas import AtlasRun, InputRow, JobResult, LabelRow, RunRecord
from headmine.atlas.artifacts import ATTN_EXAMPLES, CAUSAL_CHECKS, make_causal_checks
from headmine.core.errors import InputError
from headmine.detectors import Detector
from headmine.detectors.base import NON_FIRST_MASS, NON_FIRST_MASS_FLOOR
from headmine.tasks import PROBES

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances (the CLI draws bars from it)."""

CAUSAL_SEED_OFFSET = 1000
"""Causal evaluation batches use the scan's seed + this, so they never repeat a probe batch."""

DORMANT_METHOD = "dormant"
"""Method name of the dormancy test's rows, labels and group check (a follow-up of a detector's check)."""
DORMANT_METRIC = "kl_move_to_first"
DORMANT_TYPE = "Active-Dormant Head"


def verdict(check: CausalCheck | None) -> str:
    """One line on a causal check for a label's note."""
    if check is None:
        return "causal: not tested"
    expect = "no harm expected; " if check.expected_sign == 0 else ""
    return (f"causal: {'confirmed' if check.confirmed else 'unconfirmed'} ({expect}top-{check.k} "
            f"{check.topk_effect:+.3g} vs random {check.random_mean:+.3g})")


SIZED_PROBES = ("repeated_tokens", "natural_text", "ioi")
"""The probe tasks whose sequence count a user sets with one number (``headmine scan --n``, ``hm.scan(n=)``)."""


def probe_sizes(n: int | None) -> dict[str, dict[str, int]]:
    """``ScanConfig.probe_params`` giving each of :data:`SIZED_PROBES` ``n`` sequences (none when ``n`` is None)."""
    return {} if n is None else {task: {"n": n} for task in SIZED_PROBES}


@dataclass(frozen=True, kw_only=True)
class ScanConfig:
    """What a scan runs.

    Attributes:
        detectors: detector names (None = all registered).
        probe_params: per probe task, builder parameters overriding the task's scan defaults
            (``ProbeTask.defaults``; e.g. ``{"repeated_tokens": {"n": 1000}}``).
        batch_size: sequences per forward pass.
        seed: seed of every probe (causal batches use seed + 1000).
        causal: run the ablation check (top-k vs k random heads) per detector.
        top_k: heads ablated per check (None: max(1, min(5, n_heads_total // 8))).
        n_random: random k-head draws per check.
        causal_n: sequences in each causal evaluation batch.
        max_new_tokens: greedy decoding steps per prompt, for probe tasks whose capture plan decodes
            (the needle) and leaves the number of steps to the scan.
        dormant_top: sink heads tested for dormancy (move all attention to the first token).
    """

    detectors: tuple[str, ...] | None = None
    probe_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    batch_size: int = 8
    seed: int = 0
    causal: bool = True
    top_k: int | None = None
    n_random: int = 5
    causal_n: int = 8
    max_new_tokens: int = 6
    dormant_top: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")
        if self.n_random < 1:
            raise InputError(f"n_random must be >= 1, got {self.n_random}")
        unknown = [name for name in self.probe_params if name not in PROBES]
        if unknown:
            raise InputError(f"unknown probe task(s) {sorted(unknown)}", f"use {PROBES.names()}")

    def params_for(self, task: str) -> dict[str, Any]:
        """The parameters the scan builds ``task`` with: its defaults, then this config's overrides."""
        return PROBES.get(task).params(self.probe_params.get(task))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_params"] = {k: dict(v) for k, v in self.probe_params.items()}
        return d


@dataclass
class CausalCheck:
    """Ablating the top-k heads of one detector vs k random heads, on the task that defines the type.

    ``effect`` values are increases of a "higher is worse" metric (loss, or minus the IOI logit
    difference); ``expected_sign`` is +1 when ablating the type should hurt, -1 when it should help,
    and 0 when it should NOT hurt more than random heads (dormant heads).
    """

    detector: str
    metric: str
    heads: list[str]
    k: int
    clean: float
    topk_effect: float
    random_effects: list[float]
    expected_sign: int = 1

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_effects))

    @property
    def random_std(self) -> float:
        return float(np.std(self.random_effects, ddof=1)) if len(self.random_effects) > 1 else float("nan")

    @property
    def confirmed(self) -> bool:
        """The top-k effect (signed as expected) beats every random draw and the random mean + 2 sd; for
        ``expected_sign == 0``: the effect is no larger than the largest random draw nor the random mean + 2 sd."""
        if self.expected_sign == 0:
            sd0 = self.random_std if self.random_std == self.random_std else 0.0
            return bool(self.topk_effect <= max(self.random_effects)
                        and self.topk_effect <= self.random_mean + 2 * sd0)
        s = self.expected_sign
        top = s * self.topk_effect
        rand = [s * r for r in self.random_effects]
        sd = self.random_std if self.random_std == self.random_std else 0.0
        return bool(top > 0 and top > max(rand) and top > float(np.mean(rand)) + 2 * sd)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "random_mean": self.random_mean, "random_std": self.random_std,
                "confirmed": self.confirmed}


@dataclass
class ScanResult(JobResult):
    """Scores (tidy table), causal checks, the inputs used, timings and provenance."""

    model: str
    model_info: dict[str, Any]
    config: ScanConfig
    detectors: list[Detector]
    scores: pd.DataFrame
    causal: dict[str, CausalCheck]
    inputs: dict[str, list[tuple[int, ...]]]
    probe_params: dict[str, dict[str, Any]]
    timings: dict[str, float]
    started_at: str = ""
    notes: list[str] = field(default_factory=list)
    attn_examples: dict[str, Any] = field(default_factory=dict)
    input_texts: dict[str, list[str]] = field(default_factory=dict)  # task -> decoded text of each input

    def detector_scores(self, name: str, metric: str = "score") -> pd.DataFrame:
        df = self.scores
        return df[(df.method == name) & (df.metric == metric) & (df.component == "head")]

    def matrix(self, name: str) -> np.ndarray:
        df = self.detector_scores(name)
        n_l, n_h = int(df.layer.max()) + 1, int(df["head"].max()) + 1
        out = np.full((n_l, n_h), np.nan)
        out[df.layer.to_numpy(), df["head"].to_numpy()] = df.value.to_numpy()
        return out

    def non_first_mass(self, name: str) -> pd.DataFrame:
        """The attention mass on keys other than the first behind a renormalised score (empty otherwise)."""
        return self.detector_scores(name, NON_FIRST_MASS)

    def top(self, name: str, k: int = 5) -> pd.DataFrame:
        """The k best heads of a detector (highest score, NaN last). For a renormalised score, heads whose
        non-first-token mass is below ``NON_FIRST_MASS_FLOOR`` are not candidates (their score is measured on
        a sliver of their attention), so neither labels nor causal checks pick them."""
        df = self.detector_scores(name).dropna(subset=["value"])
        mass = self.non_first_mass(name)
        if len(mass):
            faint = {(int(r.layer), int(r.head)) for r in mass.itertuples() if not r.value >= NON_FIRST_MASS_FLOOR}
            df = df[[(int(a), int(b)) not in faint for a, b in zip(df.layer, df["head"], strict=True)]]
        return df.sort_values("value", ascending=False).head(k)

    def labels(self) -> list[dict[str, Any]]:
        """Heads at or above each detector's threshold, with the causal verdict in the note (and, for a
        renormalised score, the non-first-token mass it rests on); then the dormant heads: sink heads whose
        attention moved to the first token changes the output by less than their detector's KL bound."""
        out = []
        for det in self.detectors:
            check = self.causal.get(det.name)
            mass = {(int(r.layer), int(r.head)): float(r.value) for r in self.non_first_mass(det.name).itertuples()}
            for row in self.top(det.name, k=10**6).itertuples():
                if row.value >= det.threshold:
                    kept = mass.get((int(row.layer), int(row.head)))
                    note = verdict(check) + ("" if kept is None else f"; non-first-token mass {kept:.3g}")
                    out.append({"layer": int(row.layer), "head": int(row.head), "head_type": det.head_type,
                                "stage": det.stage, "method": det.name, "value": float(row.value),
                                "threshold": det.threshold, "note": note})
            bound = det.causal.dormant_below if det.causal is not None else None
            if bound is not None:
                out.extend(self._dormant_labels(bound))
        return out

    def _dormant_labels(self, bound: float) -> list[dict[str, Any]]:
        info = catalog.head_type_info(DORMANT_TYPE)
        df = self.scores
        kl = df[(df.method == DORMANT_METHOD) & (df.metric == DORMANT_METRIC) & (df.component == "head")]
        note = verdict(self.causal.get(DORMANT_METHOD))
        return [{"layer": int(r.layer), "head": int(r.head), "head_type": info.name, "stage": info.stage,
                 "method": DORMANT_METHOD, "value": float(r.value), "threshold": bound,
                 "note": f"{note}; KL of moving its attention to the first token {r.value:.2g} < {bound:g} nats"}
                for r in kl.sort_values("value").itertuples() if r.value < bound]

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        """The scan as ONE atlas run: scores (NaN values kept), labels, exact inputs, causal details."""
        record = RunRecord(
            kind="scan", model=self.model, model_info=self.model_info,
            task=",".join(sorted(self.inputs)),
            params={"config": self.config.to_dict(), "probes": self.probe_params,
                    "detectors": [d.name for d in self.detectors]},
            seeds={"seed": self.config.seed, "causal_seed": self.config.seed + CAUSAL_SEED_OFFSET},
            started_at=self.started_at or None, duration_s=float(sum(self.timings.values())),
            group_id=group_id,
            notes="; ".join(self.notes) or None,
        )
        labels = [LabelRow(**lab) for lab in self.labels()]
        texts = self.input_texts
        inputs = [InputRow(idx=i, token_ids=ids, role=task,
                           text=texts[task][i] if i < len(texts.get(task, ())) else None)
                  for task, rows in sorted(self.inputs.items()) for i, ids in enumerate(rows)]
        artifacts = {CAUSAL_CHECKS: make_causal_checks(self.causal), "timings": self.timings,
                     **({ATTN_EXAMPLES: self.attn_examples} if self.attn_examples else {}),
                     "detectors": {d.name: {"head_type": d.head_type, "stage": d.stage, "task": d.task,
                                            "threshold": d.threshold, "definition": d.definition}
                                   for d in self.detectors}}
        return AtlasRun(record=record, scores=self.scores, labels=labels, inputs=inputs, artifacts=artifacts)
