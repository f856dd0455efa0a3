"""Scan a model for head types: one capture pass per probe task, streaming scores, causal check, atlas.

```python
from headmine.pipeline.scan import ScanConfig, scan_model, write_scan
result = scan_model(lm, ScanConfig(detectors=("induction", "previous_token")))
result.scores            # tidy table (all detectors + causal rows)
result.top("induction")  # best heads
run_id = write_scan(result, "atlas.db")
```

Detectors are grouped by their probe task; each group gets ONE ``CaptureSpec`` (the union of the
sites its detectors read) and one pass over its batches through ``capture_reduce``; every
detector adds its per-item scores to a ``ScoreAccumulator`` per batch, so only one batch of
activations is ever alive. Token ids of every probe are kept for the atlas (``inputs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from headmine.capture import CaptureSpec, capture_reduce, run_capture
from headmine.capture.records import CaptureRecord
from headmine.core.errors import AtlasError, InputError, TaskError
from headmine.core.ids import HeadId, Site
from headmine.core.tables import SCORE_COLUMNS
from headmine.detectors import CircuitWeights, Detector, ScoreAccumulator, resolve_detectors
from headmine.models.loading import LoadedModel
from headmine.tasks.base import PROBES, TokenBatch, bos_id, pad_batch, pad_id, single_token_id

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances (the CLI draws bars from it)."""

DEFAULT_PROBE_PARAMS: dict[str, dict[str, Any]] = {
    "repeated_tokens": {"n": 16, "seq_len": 50},
    "natural_text": {"n": 16, "seq_len": 64},
    "ioi": {"n": 32},
    "needle": {"n": 2, "context_lengths": (192,), "depths": (0.25, 0.75)},
    "ordinal_tokens": {},
    "text_tokens": {"max_tokens": 400},
    "ioi_names": {},
}


@dataclass(frozen=True, kw_only=True)
class ScanConfig:
    """What a scan runs.

    Attributes:
        detectors: detector names (None = all registered).
        probe_params: per probe task, builder parameters overriding ``DEFAULT_PROBE_PARAMS``
            (e.g. ``{"repeated_tokens": {"n": 1000}}``).
        batch_size: sequences per forward pass.
        seed: seed of every probe (causal batches use seed + 1000).
        causal: run the ablation check (top-k vs k random heads) per detector.
        top_k: heads ablated per check (None: max(1, min(5, n_heads_total // 8))).
        n_random: random k-head draws per check.
        causal_n: sequences in each causal evaluation batch.
        max_new_tokens: greedy decoding steps per needle prompt.
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
        unknown = set(self.probe_params) - set(DEFAULT_PROBE_PARAMS)
        if unknown:
            raise InputError(f"unknown probe task(s) {sorted(unknown)}", f"use {sorted(DEFAULT_PROBE_PARAMS)}")

    def params_for(self, task: str) -> dict[str, Any]:
        return {**DEFAULT_PROBE_PARAMS.get(task, {}), **dict(self.probe_params.get(task, {}))}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_params"] = {k: dict(v) for k, v in self.probe_params.items()}
        return d


@dataclass
class CausalCheck:
    """Ablating the top-k heads of one detector vs k random heads, on the task that defines the type.

    ``effect`` values are increases of a "higher is worse" metric (loss, or minus the IOI logit
    difference); ``expected_sign`` is +1 when ablating the type should hurt, -1 when it should help.
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
        """The top-k effect (signed as expected) beats every random draw and the random mean + 2 sd."""
        s = self.expected_sign
        top = s * self.topk_effect
        rand = [s * r for r in self.random_effects]
        sd = self.random_std if self.random_std == self.random_std else 0.0
        return bool(top > 0 and top > max(rand) and top > float(np.mean(rand)) + 2 * sd)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "random_mean": self.random_mean, "random_std": self.random_std,
                "confirmed": self.confirmed}


@dataclass
class ScanResult:
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

    def detector_scores(self, name: str, metric: str = "score") -> pd.DataFrame:
        df = self.scores
        return df[(df.method == name) & (df.metric == metric) & (df.component == "head")]

    def matrix(self, name: str) -> np.ndarray:
        df = self.detector_scores(name)
        n_l, n_h = int(df.layer.max()) + 1, int(df["head"].max()) + 1
        out = np.full((n_l, n_h), np.nan)
        out[df.layer.to_numpy(), df["head"].to_numpy()] = df.value.to_numpy()
        return out

    def top(self, name: str, k: int = 5) -> pd.DataFrame:
        """The k best heads of a detector (highest score, NaN last)."""
        df = self.detector_scores(name).dropna(subset=["value"])
        return df.sort_values("value", ascending=False).head(k)

    def labels(self) -> list[dict[str, Any]]:
        """Heads at or above each detector's threshold, with the causal verdict in the note."""
        out = []
        for det in self.detectors:
            check = self.causal.get(det.name)
            verdict = ("causal: not tested" if check is None else
                       f"causal: {'confirmed' if check.confirmed else 'unconfirmed'} "
                       f"(top-{check.k} {check.topk_effect:+.3g} vs random {check.random_mean:+.3g})")
            for row in self.top(det.name, k=10**6).itertuples():
                if row.value >= det.threshold:
                    out.append({"layer": int(row.layer), "head": int(row.head), "head_type": det.head_type,
                                "stage": det.stage, "method": det.name, "value": float(row.value),
                                "threshold": det.threshold, "note": verdict})
        return out


# --------------------------------------------------------------------------- weights
def _attn_norm_gain(lm: LoadedModel, layer: int) -> torch.Tensor:
    """Gain of the norm in front of attention (names used by the supported HF families)."""
    mod = lm.adapter.layer(layer)
    for name in ("input_layernorm", "ln_1", "self_attn_layer_norm", "attention_norm"):
        norm = getattr(mod, name, None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            w = norm.weight.detach().to(torch.float32)
            if "Gemma" in type(norm).__name__:  # Gemma RMSNorm scales by (1 + weight)
                w = w + 1.0
            return w
    return torch.ones(lm.geometry.d_model)


def circuit_weights(lm: LoadedModel) -> CircuitWeights:
    """Stack the weights OV/QK detectors read (no model object goes to a detector)."""
    a, g = lm.adapter, lm.geometry
    with torch.no_grad():
        w_q = torch.stack([a.W_Q(layer).detach().float() for layer in range(g.n_layers)])
        w_k = torch.stack([a.per_query_head(a.W_K(layer)).detach().float() for layer in range(g.n_layers)])
        w_v = torch.stack([a.per_query_head(a.W_V(layer)).detach().float() for layer in range(g.n_layers)])
        w_o = torch.stack([a.W_O(layer).detach().float() for layer in range(g.n_layers)])
        w_u = a.W_U().detach().float()
        final = a.final_norm()
        kind = "layer" if final is not None and isinstance(final, torch.nn.LayerNorm) else "rms"
        if final is not None and getattr(final, "weight", None) is not None:
            gain = final.weight.detach().float()
            if "Gemma" in type(final).__name__:
                gain = gain + 1.0
            w_u = gain[:, None] * w_u
        gains = torch.stack([_attn_norm_gain(lm, layer) for layer in range(g.n_layers)])
    return CircuitWeights(W_Q=w_q, W_K=w_k, W_V=w_v, W_O=w_o, W_U=w_u, attn_norm_gain=gains, norm_kind=kind)


# --------------------------------------------------------------------------- probes
def _prefix(tokenizer: Any) -> list[int]:
    b = bos_id(tokenizer)
    return [] if b is None else [b]


def _isolated(tokenizer: Any, token_ids: list[int], task: str, meta: dict[str, Any]) -> TokenBatch:
    """Each token alone (after BOS when the tokenizer has one): effective embeddings after block 0."""
    if not token_ids:
        raise TaskError(f"probe {task!r} has no tokens", "check the tokenizer")
    pre = _prefix(tokenizer)
    ids, mask = pad_batch([[*pre, t] for t in token_ids], pad_id(tokenizer))
    return TokenBatch(input_ids=ids, attention_mask=mask, task=task,
                      meta={"token_ids": torch.tensor(token_ids, dtype=torch.long), **meta},
                      params={"n_tokens": len(token_ids)})


def build_probe(lm: LoadedModel, task: str, params: dict[str, Any], seed: int) -> TokenBatch:
    """The probe batch for ``task`` (from ``headmine.tasks``; isolated-token probes built here)."""
    tok = lm.tokenizer
    params = dict(params)
    if task == "ordinal_tokens":
        from headmine.tasks.probes import ordinal_token_sets

        sets = ordinal_token_sets(tok, **params)
        uniq = sorted({t for s in sets.values() for t in s})
        return _isolated(tok, uniq, task, {"ordinal_sets": [list(s) for s in sets.values()],
                                           "set_names": list(sets)})
    if task == "ioi_names":
        from headmine.tasks.ioi import ioi_names

        names = ioi_names(tok)
        if len(names) < 5:
            raise TaskError(
                f"only {len(names)} IOI names are a single token (with a leading space) in this tokenizer",
                "name movers need single-token names; drop name_copy/negative_name_copy/name_mover for this model",
            )
        ids = sorted({single_token_id(tok, " " + n) for n in names})
        return _isolated(tok, ids, task, {})
    if task == "text_tokens":
        max_tokens = int(params.pop("max_tokens", 400))
        text = PROBES.get("natural_text")(tok, seed=seed, **DEFAULT_PROBE_PARAMS["natural_text"])
        specials = set(getattr(tok, "all_special_ids", []) or [])
        seen: list[int] = []
        for t in text.input_ids[text.attention_mask.bool()].tolist():
            if t not in specials and t not in seen:
                seen.append(t)
        return _isolated(tok, sorted(seen[:max_tokens]), task, {})
    return PROBES.get(task)(tok, seed=seed, **params)


def _spec_for(lm: LoadedModel, detectors: list[Detector], sites: set[Site]) -> CaptureSpec:
    if all(d.capture_layers == "first" for d in detectors):
        return CaptureSpec(sites=frozenset(sites), layers=(1,) if lm.geometry.n_layers > 1 else (lm.geometry.n_layers,),
                           query_positions="last", keep_logits=False)
    return CaptureSpec(sites=frozenset(sites), keep_logits=False)


def _batches(batch: TokenBatch, size: int) -> Iterator[TokenBatch]:
    yield from batch.split(size)


# --------------------------------------------------------------------------- scan
def scan_model(lm: LoadedModel, config: ScanConfig | None = None, *, progress: Progress | None = None) -> ScanResult:
    """Run every selected detector, one capture pass per probe task, then the causal checks."""
    from headmine.atlas.store import utc_now

    config = config or ScanConfig()
    detectors = resolve_detectors(list(config.detectors) if config.detectors else None)
    started = utc_now()
    g = lm.geometry
    weights = circuit_weights(lm) if any(d.needs_weights for d in detectors) else None
    groups: dict[str, list[Detector]] = {}
    for d in detectors:
        groups.setdefault(d.task, []).append(d)
    # build every probe first: a tokenizer problem (multi-token names...) fails before any forward pass
    probes: dict[str, TokenBatch] = {}
    probe_params: dict[str, dict[str, Any]] = {}
    not_applicable: dict[str, str] = {}
    for task in list(groups):
        probe_params[task] = config.params_for(task)
        try:
            probes[task] = build_probe(lm, task, probe_params[task], config.seed)
            lm.check_length(int(probes[task].input_ids.shape[1]) + (config.max_new_tokens if task == "needle" else 0))
        except (TaskError, InputError) as exc:
            if config.detectors:  # the user asked for these detectors: say why they cannot run
                raise
            not_applicable[task] = exc.problem  # default scan: run what this tokenizer supports
            detectors = [d for d in detectors if d.task != task]
            del groups[task]
            probes.pop(task, None)
    if not groups:
        raise TaskError(f"no probe task can be built for {lm.name}: {not_applicable}", "use a natural-language model")
    frames: list[pd.DataFrame] = []
    timings: dict[str, float] = {}
    inputs: dict[str, list[tuple[int, ...]]] = {}
    base_meta = {"n_layers": g.n_layers, "n_heads": g.n_heads}
    for task, dets in groups.items():
        t0 = time.perf_counter()
        probe = probes[task]
        inputs[task] = [tuple(int(t) for t in row[m.bool()].tolist()) for row, m in zip(probe.input_ids, probe.attention_mask, strict=True)]
        accs = {d.name: ScoreAccumulator() for d in dets}
        if task == "needle":
            _scan_needle(lm, probe, dets, accs, config, progress, base_meta)
        else:
            sites: set[Site] = set().union(*(d.sites for d in dets))
            spec = _spec_for(lm, dets, sites)
            total = len(probe)
            done = 0
            metas: list[dict[str, Any]] = []

            # single-token probes are 1-2 tokens per row: one wide batch is one cheap forward
            wide = all(d.capture_layers == "first" for d in dets)
            size = max(config.batch_size, 512) if wide else config.batch_size

            def pairs(probe: TokenBatch = probe, metas: list[dict[str, Any]] = metas,
                      size: int = size) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for sub in _batches(probe, size):
                    metas.append({**sub.meta, **base_meta})
                    yield sub.input_ids, sub.attention_mask

            def reduce(record: CaptureRecord, dets: list[Detector] = dets, metas: list[dict[str, Any]] = metas,
                       accs: dict[str, ScoreAccumulator] = accs) -> int:
                meta = metas[-1]
                for d in dets:
                    accs[d.name].add(d.score(record, meta, weights))
                return int(record.input_ids.shape[0])

            if task == "ioi":
                for n_done in _ioi_pass(lm, spec, probe, config.batch_size, reduce, metas, base_meta):
                    done += n_done
                    if progress:
                        progress(task, done, total)
            else:
                for n_done in capture_reduce(lm, spec, pairs(), reduce):
                    done += n_done
                    if progress:
                        progress(task, done, total)
        for d in dets:
            frames.append(accs[d.name].finalize(method=d.name, metric=d.metric))
        timings[task] = time.perf_counter() - t0
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    result = ScanResult(model=lm.name, model_info=_model_info(lm), config=config, detectors=detectors,
                        scores=scores, causal={}, inputs=inputs, probe_params=probe_params, timings=timings,
                        started_at=started,
                        notes=[f"probe {task!r} skipped: {why}" for task, why in not_applicable.items()])
    result.attn_examples = attention_examples(lm, sorted({h for d in detectors for h in head_ids(result.top(d.name, 3))}))
    if config.causal:
        from headmine.pipeline.causal_check import run_causal_checks

        t0 = time.perf_counter()
        result.causal, extra, causal_inputs = run_causal_checks(lm, result, progress=progress)
        result.scores = pd.concat([result.scores, extra], ignore_index=True)
        result.inputs.update(causal_inputs)
        timings["causal"] = time.perf_counter() - t0
    return result


EXAMPLE_PROMPTS = (
    ("repetition", "The cat sat on the mat. The dog ran in the park. The cat sat on the mat. The dog ran"),
    ("names", "When Mary and John went to the store, John gave a drink to"),
)


def attention_examples(lm: LoadedModel, heads: list[HeadId], prompts=EXAMPLE_PROMPTS, digits: int = 3) -> dict[str, Any]:
    """Attention patterns of ``heads`` on a few short example prompts, for the report's head pages:
    ``{"examples": [{"name", "text", "tokens"}], "patterns": {"L1H2": [[[w]] per example]}}``."""
    if not heads or lm.tokenizer is None:
        return {}
    examples, patterns = [], {str(h): [] for h in heads}
    for name, text in prompts:
        enc = lm.tokenize([text])
        if enc["input_ids"].shape[1] > lm.geometry.n_ctx:
            continue
        rec = run_capture(lm, CaptureSpec(sites={Site.PATTERN}, heads=tuple(heads), keep_logits=False), **enc)
        ids = enc["input_ids"][0].tolist()
        examples.append({"name": name, "text": text, "tokens": [lm.tokenizer.decode([i]) for i in ids]})
        for h in heads:
            mat = rec.head_tensor(Site.PATTERN, h)[0].float()
            patterns[str(h)].append([[round(float(w), digits) for w in row[: q + 1]] for q, row in enumerate(mat.tolist())])
    return {"examples": examples, "patterns": patterns} if examples else {}


def _ioi_pass(lm: LoadedModel, spec: CaptureSpec, probe: TokenBatch, size: int, reduce: Callable[[CaptureRecord], int],
              metas: list[dict[str, Any]], base_meta: dict[str, Any]) -> Iterator[int]:
    """IOI: only the END query row is captured (one row per prompt: ``query_positions=END``)."""
    from dataclasses import replace

    for sub in _batches(probe, size):
        meta = {**sub.meta, **base_meta}
        meta.setdefault("END", sub.last_positions)
        metas.append(meta)
        end = torch.as_tensor(meta["END"]).long()
        record = run_capture(lm, replace(spec, query_positions=end), sub.input_ids, sub.attention_mask)
        yield reduce(record)
        del record


def _scan_needle(lm: LoadedModel, probe: TokenBatch, dets: list[Detector], accs: dict[str, ScoreAccumulator],
                 config: ScanConfig, progress: Progress | None, base_meta: dict[str, Any]) -> None:
    """Greedy decoding per needle prompt; each step captures the newest row's attention only.

    A test counts when the model got the needle right (recall of the answer tokens in the
    generated tokens > 0.5); a head's score on a test is the sum of its per-step events.
    """
    spec = CaptureSpec(sites=frozenset({Site.PATTERN}), query_positions="last", keep_logits=True)
    n = len(probe)
    for i in range(n):
        row = probe.select([i])
        ids = row.input_ids[:, : int(row.lengths[0])]
        span = torch.as_tensor(row.meta["needle_span"]).view(1, 2)
        answer = list(row.meta["answer_ids"][0])
        per_det = {d.name: None for d in dets}
        generated: list[int] = []
        for _ in range(config.max_new_tokens):
            record = run_capture(lm, spec, ids, torch.ones_like(ids))
            nxt = int(record.logits[0, -1].argmax())
            meta = {**base_meta, "needle_span": span, "generated": torch.tensor([nxt])}
            for d in dets:
                v = d.score(record, meta, None).values
                per_det[d.name] = v if per_det[d.name] is None else per_det[d.name] + v
            generated.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
            del record
        recall = sum(1 for t in answer if t in generated) / max(1, len(answer))
        if recall > 0.5:
            from headmine.detectors.base import BatchScores

            for d in dets:
                accs[d.name].add(BatchScores(per_det[d.name]))
        if progress:
            progress("needle", i + 1, n)
    for d in dets:
        if accs[d.name].sum is None:  # the model retrieved no needle: scores are undefined
            from headmine.detectors.base import BatchScores, empty_scores

            accs[d.name].add(BatchScores(empty_scores(1, base_meta["n_layers"], base_meta["n_heads"])))


def _model_info(lm: LoadedModel) -> dict[str, Any]:
    info = lm.provenance.to_dict() if hasattr(lm.provenance, "to_dict") else {}
    g = lm.geometry
    info.setdefault("geometry", {"n_layers": g.n_layers, "n_heads": g.n_heads, "n_kv_heads": g.n_kv_heads,
                                 "d_head": g.d_head, "d_model": g.d_model})
    return info


# --------------------------------------------------------------------------- atlas
def write_scan(result: ScanResult, atlas_path: str, *, group_id: str | None = None) -> int:
    """Write the scan as ONE atlas run (scores, labels, exact inputs, causal details), atomically."""
    import math

    from headmine.atlas import Atlas, InputRow, LabelRow, RunRecord, ScoreRow

    run = RunRecord(
        kind="scan", model=result.model, model_info=result.model_info,
        task=",".join(sorted(result.inputs)),
        params={"config": result.config.to_dict(), "probes": result.probe_params,
                "detectors": [d.name for d in result.detectors]},
        seeds={"seed": result.config.seed, "causal_seed": result.config.seed + 1000},
        started_at=result.started_at or None, duration_s=float(sum(result.timings.values())),
        group_id=group_id,
        notes="; ".join(result.notes) or None,
    )

    def score_rows() -> Iterator[ScoreRow]:
        for r in result.scores.itertuples(index=False):
            stderr = None if r.stderr is None or (isinstance(r.stderr, float) and math.isnan(r.stderr)) else float(r.stderr)
            yield ScoreRow(component=r.component, layer=int(r.layer), head=int(r.head), method=r.method,
                           metric=r.metric, value=float(r.value), n=int(r.n), stderr=stderr)

    labels = [LabelRow(**lab) for lab in result.labels()]
    inputs = [InputRow(idx=i, token_ids=ids, role=task) for task, rows in sorted(result.inputs.items())
              for i, ids in enumerate(rows)]
    artifacts = {"causal": {k: v.to_dict() for k, v in result.causal.items()}, "timings": result.timings,
                 **({"attn_examples": result.attn_examples} if result.attn_examples else {}),
                 "detectors": {d.name: {"head_type": d.head_type, "stage": d.stage, "task": d.task,
                                        "threshold": d.threshold, "definition": d.definition}
                               for d in result.detectors}}
    try:
        with Atlas.open(atlas_path) as db:
            return db.write_run(run, scores=score_rows(), labels=labels, inputs=inputs, artifacts=artifacts)
    except AtlasError:
        raise
    except Exception as err:  # nothing was written: write_run is one transaction
        raise AtlasError(f"could not write the scan to {atlas_path}: {err}", "check the atlas path and disk space") from err


def head_ids(df: pd.DataFrame) -> list[HeadId]:
    return [HeadId(int(r.layer), int(r.head)) for r in df.itertuples()]
