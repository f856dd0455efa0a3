"""What a detector is, the registry, streaming accumulation and the template helpers.

A detector is a pure function ``score(record, meta, weights) -> BatchScores`` of one capture
record (plus the batch metadata of its probe task and, for OV/QK circuit scores, a
``CircuitWeights`` object holding weight tensors). It never sees the model and registers no hook.
``BatchScores.values`` is ``[item, layer, head]`` with NaN where a cell was not measured (a layer
absent from the record, a sequence with no eligible position); the scan sums values, squares and
counts per cell across batches (``ScoreAccumulator``) so a dataset never sits in memory, and
``finalize`` turns the sums into the tidy table of ``headmine.core.tables``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from headmine import catalog
from headmine.capture.records import CaptureRecord
from headmine.core.errors import DetectorError
from headmine.core.ids import Site
from headmine.core.registry import Registry
from headmine.core.tables import SCORE_COLUMNS, scores_frame

NON_FIRST_MASS = "non_first_mass"
"""Metric name of the attention mass a renormalised score was computed from (keys other than the first)."""

NON_FIRST_MASS_FLOOR = 0.1
"""No head is labelled from a renormalised score whose non-first-token mass is below this.

Scores that drop key 0 (the attention sink) and renormalise the rest are blind to how much attention
was left: a head that puts 99% of its attention on the first token and a faint 1% on the previous
token scores 1.0 as a previous-token head. Below 10% of its attention on real keys, the head's
output is dominated by the sink value, so its pattern over the other keys says little about what the
head does: such a head is reported with both numbers but not labelled. (SmolLM2's strongest sinks put
60-95% on the first token; its previous-token and induction heads keep well over 10% elsewhere.)
"""


@dataclass(frozen=True)
class BatchScores:
    """Per-item scores of one batch: ``values`` [item, layer, head] (NaN = not measured).

    ``non_first_mass`` (same shape, optional): for scores renormalised after dropping key 0, the
    attention mass on keys other than the first over the rows scored; the scan stores it beside the
    score (metric ``non_first_mass``) and labels no head whose mass is below ``NON_FIRST_MASS_FLOOR``.
    """

    values: torch.Tensor
    non_first_mass: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.dim() != 3:
            raise DetectorError(f"BatchScores.values must be [item, layer, head], got {tuple(self.values.shape)}")
        if self.non_first_mass is not None and self.non_first_mass.shape != self.values.shape:
            raise DetectorError(f"non_first_mass {tuple(self.non_first_mass.shape)} must match values "
                                f"{tuple(self.values.shape)}")


ScoreFn = Callable[[CaptureRecord, Mapping[str, Any], Any], BatchScores]


@dataclass(frozen=True, kw_only=True)
class CausalCheckSpec:
    """How a detector's head type is confirmed: mean-ablate its top-k heads against k random heads.

    Attributes:
        task: a registered probe task with an evaluation (a metric where higher is worse) on which the
            type's heads matter, e.g. ``"repeated_tokens"`` (loss on the second repeat).
        expected_sign: +1 when ablating the type's heads should raise that metric (hurt), -1 when it
            should lower it (a head that works against the answer, e.g. negative name movers).
        expected_sign 0: ablating the heads should NOT hurt more than random heads do (dormant heads).
        dormant_below: also test the heads at or above the threshold for dormancy on the same batch: move
            all of a head's attention to the first token and record the KL to the clean output; a head
            whose KL (nats per token) is below this is labelled dormant (survey: Active-Dormant Head), and
            the dormant heads together get a check that expects no harm (None: no dormancy test).
    """

    task: str
    expected_sign: int = 1
    dormant_below: float | None = None

    def __post_init__(self) -> None:
        if self.expected_sign not in (1, -1, 0):
            raise DetectorError(f"expected_sign must be +1, -1 or 0 (no harm expected), got {self.expected_sign!r}")
        if self.dormant_below is not None and self.dormant_below <= 0:
            raise DetectorError(f"dormant_below must be a positive KL in nats, got {self.dormant_below!r}")


@dataclass(frozen=True, kw_only=True)
class Detector:
    """A registered head score: everything the scan, the causal check and the catalog need to know.

    Attributes:
        name: registry name (also the ``method`` column of the score table).
        head_type: the head type this score looks for; resolved to the survey's canonical name when the
            catalog knows it (any alias or case), kept as given otherwise.
        stage: the survey stage; taken from the catalog for a survey type, required otherwise.
        task: the probe task whose capture pass it reads (its capture plan is the task's).
        sites: capture sites it reads (the scan captures the union per task).
        score: the pure scoring function.
        threshold: score at or above which a head is labelled with ``head_type``.
        causal: the check that confirms the type, or None to declare that the type has none (the scan
            then says so in its notes).
        also_finds: further catalog head types this score is evidence for, as (head type, note) pairs.
        needs_weights: whether ``score`` needs a ``CircuitWeights`` object.
        metric: the ``metric`` column of the table.
        definition: one line saying what the number is.
    """

    name: str
    head_type: str
    stage: str | None = None
    task: str
    sites: frozenset[Site]
    score: ScoreFn = field(repr=False)
    threshold: float
    causal: CausalCheckSpec | None
    also_finds: tuple[tuple[str, str], ...] = ()
    needs_weights: bool = False
    metric: str = "score"
    definition: str = ""

    def __post_init__(self) -> None:
        canonical = catalog.canonical_head_type(self.head_type)
        if canonical is not None:
            object.__setattr__(self, "head_type", canonical)
            object.__setattr__(self, "stage", catalog.head_type_info(canonical).stage)
        elif self.stage is None:
            raise DetectorError(
                f"detector {self.name!r}: head type {self.head_type!r} is not in the survey catalog, so it needs a stage",
                f"pass stage= one of {', '.join(catalog.STAGES)}, or use a catalog name (`headmine catalog`)",
            )
        else:
            object.__setattr__(self, "stage", catalog.normalize_stage(self.stage))

    def catalog_links(self) -> list[tuple[str, catalog.DetectorLink]]:
        """(head type, link) pairs this detector adds to the catalog: its own type and ``also_finds``."""
        own = [(self.head_type, catalog.DetectorLink(detector=self.name, task=self.task, kind="attention",
                                                     note=self.definition or None))]
        return own + [(head_type, catalog.DetectorLink(detector=self.name, task=self.task, kind="attention", note=note))
                      for head_type, note in self.also_finds]

    def __call__(self, record: CaptureRecord, meta: Mapping[str, Any] | None = None, weights: Any = None, *,
                 with_mass: bool = False) -> pd.DataFrame:
        """Score one record and return the tidy table (mean over items, n, stderr); ``with_mass`` adds the
        ``non_first_mass`` rows of a renormalised score (the scan always stores them)."""
        acc = ScoreAccumulator()
        acc.add(self.score(record, meta or {}, weights))
        table = acc.finalize(method=self.name, metric=self.metric)
        return table if with_mass else table[table.metric == self.metric].reset_index(drop=True)


DETECTORS: Registry[Detector] = Registry("detector", DetectorError, plugin_group="headmine.detectors")


def register(detector: Detector) -> Detector:
    """Register a detector under its name, add its head-type links to the catalog, and return it."""
    DETECTORS.register(detector.name)(detector)
    for head_type, link in detector.catalog_links():
        catalog.register_link(head_type, link)
    return detector


def unregister(name: str) -> Detector:
    """Remove a registered detector and its catalog links (for throwaway detectors, e.g. in tests)."""
    detector = DETECTORS.unregister(name)
    catalog.unregister_links(name)
    return detector


def get_detector(name: str) -> Detector:
    """The detector called ``name`` (DetectorError listing the known names otherwise)."""
    return DETECTORS.get(name)


def resolve_detectors(names: list[str] | tuple[str, ...] | None) -> list[Detector]:
    """Detectors by name (all when None), unknown names rejected before anything runs."""
    if not names:
        return [d for _, d in DETECTORS.items()]
    out: list[Detector] = []
    for name in names:
        det = get_detector(name.strip())
        if det not in out:
            out.append(det)
    return out


class ScoreAccumulator:
    """Streaming per-cell sums over batches: value, value squared, count (NaN cells skipped)."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.mass: ScoreAccumulator | None = None  # the non-first-token mass, for renormalised scores

    def add(self, scores: BatchScores) -> None:
        if scores.non_first_mass is not None:
            if self.mass is None:
                self.mass = ScoreAccumulator()
            self.mass.add(BatchScores(scores.non_first_mass))
        v = scores.values.detach().to(torch.float64).cpu()
        ok = ~torch.isnan(v)
        v0 = torch.where(ok, v, torch.zeros_like(v))
        s, sq, c = v0.sum(0), (v0 * v0).sum(0), ok.sum(0)
        if self.sum is None:
            self.sum, self.sumsq, self.count = s, sq, c
        else:
            if self.sum.shape != s.shape:
                raise DetectorError(f"batch scores of shape {tuple(s.shape)} do not match earlier {tuple(self.sum.shape)}")
            self.sum += s
            self.sumsq += sq
            self.count += c

    def mean_stderr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.sum is None or self.sumsq is None or self.count is None:
            raise DetectorError("no batch was scored", "give the scan at least one sequence")
        n = self.count.to(torch.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (self.sum / n).numpy()
            var = ((self.sumsq / n).numpy() - mean**2) * (n / (n - 1)).numpy()
            stderr = np.sqrt(np.clip(var, 0, None) / n.numpy())
        stderr[n.numpy() < 2] = np.nan
        return mean, stderr, self.count.numpy()

    def finalize(self, *, method: str, metric: str = "score") -> pd.DataFrame:
        """Tidy table: one row per (layer, head), mean over items, n = items counted, stderr; plus the
        ``non_first_mass`` rows when the score is renormalised."""
        mean, stderr, count = self.mean_stderr()
        rows = [
            {"layer": layer, "head": head, "method": method, "metric": metric, "value": mean[layer, head],
             "n": int(count[layer, head]), "stderr": stderr[layer, head]}
            for layer in range(mean.shape[0]) for head in range(mean.shape[1])
        ]
        frame = scores_frame(rows) if rows else pd.DataFrame(columns=SCORE_COLUMNS)
        if self.mass is not None:
            frame = pd.concat([frame, self.mass.finalize(method=method, metric=NON_FIRST_MASS)], ignore_index=True)
        return frame


# --------------------------------------------------------------------------- helpers for scores
def n_layers_heads(record: CaptureRecord, meta: Mapping[str, Any]) -> tuple[int, int]:
    """Geometry of the score matrix: ``meta['n_layers']``/``meta['n_heads']`` if given, else from the record."""
    if "n_layers" in meta and "n_heads" in meta:
        return int(meta["n_layers"]), int(meta["n_heads"])
    layers = [layer for layer in record.heads if record.heads[layer]]
    if not layers:
        raise DetectorError("the capture record holds no head", "capture at least one layer")
    return max(layers) + 1, max(max(h) for h in record.heads.values() if h) + 1


def empty_scores(n_items: int, n_layers: int, n_heads: int) -> torch.Tensor:
    return torch.full((n_items, n_layers, n_heads), float("nan"), dtype=torch.float64)


def require_site(record: CaptureRecord, site: Site, detector: str) -> dict[int, torch.Tensor]:
    per_layer = record.site(site)
    if not per_layer:
        raise DetectorError(f"detector {detector!r} needs the {site.value} site, which the record lacks",
                            f"capture with CaptureSpec(sites={{Site.{site.name}, ...}})")
    return per_layer


def query_positions(record: CaptureRecord, n_q: int) -> torch.Tensor:
    """LongTensor [batch, n_q]: the sequence position of each captured query row."""
    b = record.input_ids.shape[0]
    qi = record.query_index
    if qi is None:
        return torch.arange(n_q).expand(b, n_q)
    qi = qi.cpu()
    return qi.expand(b, n_q) if qi.dim() == 1 else qi


def template_score(record: CaptureRecord, template: torch.Tensor, meta: Mapping[str, Any], *,
                   exclude_bos: bool = True, exclude_current: bool = False, detector: str = "") -> BatchScores:
    """The TransformerLens "mul" score restricted to eligible query rows, per sequence.

    ``template`` is Bool [batch, T, T] (query i, key j), True where the head type should attend.
    Eligible rows are real query tokens whose template row has at least one target. Per sequence
    b and head: ``sum_{i eligible, j} A_ij P_ij / sum_{i eligible, j} A_ij``, after zeroing key
    column 0 (``exclude_bos``) and the diagonal (``exclude_current``) in both A and P. A perfect
    pattern scores 1; a row spread uniformly over n keys that include its one target scores 1/n.
    With ``exclude_bos`` the score is renormalised, so the batch also carries each head's mean
    attention on real keys other than the first over the eligible rows (``non_first_mass``).
    """
    patterns = require_site(record, Site.PATTERN, detector)
    n_layers, n_heads = n_layers_heads(record, meta)
    mask = record.attention_mask.cpu().bool()
    b, t = mask.shape
    p = template.cpu().bool() & mask[:, None, :] & mask[:, :, None]
    if exclude_bos:
        p[:, :, 0] = False
    if exclude_current:
        p &= ~torch.eye(t, dtype=torch.bool)
    out = empty_scores(b, n_layers, n_heads)
    mass = empty_scores(b, n_layers, n_heads)
    for layer, a in patterns.items():
        a = a.detach().cpu().to(torch.float32)  # [b, h, q, k]
        qpos = query_positions(record, a.shape[2])
        rows = torch.arange(b)[:, None]
        p_q = p[rows, qpos]  # [b, q, k]
        keys = mask[:, None, :].expand_as(p_q).clone()
        if exclude_bos:
            keys[:, :, 0] = False
        if exclude_current:
            keys &= qpos[:, :, None] != torch.arange(t)[None, None, :]
        eligible = p_q.any(-1) & mask[rows, qpos]  # [b, q]
        w = a * keys[:, None].to(a.dtype)
        w = w * eligible[:, None, :, None].to(a.dtype)
        num = (w * p_q[:, None].to(a.dtype)).sum((-1, -2))
        den = w.sum((-1, -2))
        val = torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, float("nan")))
        out[:, layer, record.heads[layer]] = val.to(torch.float64)
        if exclude_bos:
            mass[:, layer, record.heads[layer]] = non_first_mass(a, mask, qpos, eligible)
    return BatchScores(out, non_first_mass=mass if exclude_bos else None)


def non_first_mass(a: torch.Tensor, mask: torch.Tensor, qpos: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """[b, h]: mean over eligible query rows of the attention on real keys other than key 0 (NaN if none).

    ``a`` [b, h, q, k] captured rows, ``mask`` [b, T] real tokens, ``qpos`` [b, q] their positions,
    ``eligible`` [b, q] the rows a score averaged over."""
    keys = mask.clone()
    keys[:, 0] = False
    per_row = (a * keys[:, None, None, :].to(a.dtype)).sum(-1)  # [b, h, q]
    w = eligible.to(a.dtype)[:, None, :]
    n = eligible.sum(-1).to(torch.float64)  # [b]
    val = (per_row * w).sum(-1).to(torch.float64) / n.clamp_min(1)[:, None]
    val[n == 0] = float("nan")
    return val


def previous_template(input_ids: torch.Tensor) -> torch.Tensor:
    t = input_ids.shape[1]
    eye = torch.zeros(t, t, dtype=torch.bool)
    idx = torch.arange(1, t)
    eye[idx, idx - 1] = True
    return eye.expand(input_ids.shape[0], t, t)


def duplicate_template(input_ids: torch.Tensor) -> torch.Tensor:
    """P[b, i, j] = tok_j == tok_i and j < i."""
    ids = input_ids.cpu()
    t = ids.shape[1]
    same = ids[:, :, None] == ids[:, None, :]
    return same & torch.ones(t, t, dtype=torch.bool).tril(-1)


def induction_template(input_ids: torch.Tensor) -> torch.Tensor:
    """P[b, i, j] = tok_{j-1} == tok_i and j - 1 < i (the token after an earlier copy)."""
    ids = input_ids.cpu()
    b, t = ids.shape
    out = torch.zeros(b, t, t, dtype=torch.bool)
    dup = ids[:, :, None] == ids[:, None, :]  # [b, i, j'] with j' = j - 1
    lower = torch.ones(t, t, dtype=torch.bool).tril(-1)
    out[:, :, 1:] = (dup & lower)[:, :, : t - 1]
    return out
