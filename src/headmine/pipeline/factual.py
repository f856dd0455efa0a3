"""Orchestration of the factual-recall analysis (issue 6): facts -> splits -> prompts -> five analyses -> one atlas run.

Split first (issue 10): the facts of each relation are split into training facts and held-out facts,
and whole relations are held out (:func:`~headmine.causal.factual_recall.split_relation_facts`),
before any prompt is built. Each split's prompts (zero-shot and ``shots``-shot, duplicates dropped)
take their demonstrations and subject swaps from that split's facts only. Every choice of the
mitigation (the suppressor heads among its candidates, the candidate, its direction, the cost check
on the first half of the corpus windows) is made on the training prompts; it is evaluated on the
held-out facts, the held-out relations and the second half of the corpus windows.

The descriptive analyses use every split: the trajectory and the suppression table all prompts,
argument passing and the MLP decomposition the zero-shot prompts (the task's equal-length subject
swaps). The suppressor heads that feed the mitigation are measured again on the training prompts.
Argument-passing heads are ranked on half of the subject-swap pairs and their causal check (top-k vs
random heads, paired bootstrap CI) runs on the other half, so the check never reuses the pairs that
chose the heads (:func:`split_pairs`); the in-sample check is kept beside it, labelled as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from headmine.atlas import AtlasRun, InputRow, JobResult, RunRecord, ScoreRow
from headmine.causal.factual_recall import (
    FACT_SPLITS,
    Mitigation,
    answer_trajectory,
    argument_passing_heads,
    check_heads,
    choose_mitigation,
    decompose_mlp,
    evaluate_mitigation,
    final_layer_suppression,
    mlp_layer_scan,
    split_relation_facts,
    token_frequency,
)
from headmine.causal.factual_recall.common import concat_batches
from headmine.core.errors import TaskError
from headmine.core.ids import HeadId
from headmine.models.loading import LoadedModel
from headmine.tasks import factual, natural_text
from headmine.tasks.base import TokenBatch
from headmine.tasks.factual import BUILTIN_RELATIONS, Relation, builtin_relation, load_relation


@dataclass(frozen=True)
class FactualConfig:
    relations: list[str] | None = None          # None = the built-in relations
    heldout_relations: list[str] | None = None  # None = the last relation
    n_per_relation: int = 16                    # prompts per relation and style, shared by its train/held-out facts
    test_frac: float = 0.4                      # share of each other relation's facts (and prompts) held out
    shots: int = 3                              # few-shot variant (0 = zero-shot only)
    top_k: int = 3
    max_cost: float = 0.05
    frequency: str = "merge_rank"
    corpus_windows: int = 8
    window_len: int = 64
    batch_size: int = 8
    seed: int = 0
    max_senders: int | None = 24                # heads path-patched after the screen (None = all)
    max_pairs: int | None = 32                  # subject-swap pairs used for argument passing
    max_train: int | None = 48                  # training prompts scoring each mitigation candidate
    factors: tuple[float, ...] = (0.0, 0.5)     # head/MLP scale factors among the mitigation candidates


@dataclass
class FactualReport(JobResult):
    """Every analysis's summary, with the scores and exact inputs; written as one ``factual`` run
    (scores, inputs, and the summary and chosen mitigation as JSON artifacts)."""

    model: str
    config: FactualConfig
    model_info: dict[str, Any] = field(default_factory=dict)
    trajectory: dict[str, Any] = field(default_factory=dict)
    trajectory_groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    argument: dict[str, Any] = field(default_factory=dict)
    mlp_scan: list[dict[str, Any]] = field(default_factory=list)
    decomposition: dict[str, Any] = field(default_factory=dict)
    suppression: dict[str, Any] = field(default_factory=dict)
    mitigation_candidates: list[dict[str, Any]] = field(default_factory=list)
    mitigation: dict[str, Any] = field(default_factory=dict)
    chosen: Mitigation | None = None
    timings: dict[str, float] = field(default_factory=dict)
    scores: list[Any] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        skip = ("scores", "inputs", "chosen", "config", "model_info")
        return {k: v for k, v in asdict(self).items() if k not in skip} | {"config": asdict(self.config)}

    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        chosen = self.chosen
        mit = None if chosen is None else {
            "name": chosen.name, "head_scales": [[h.layer, h.head, f] for h, f in chosen.head_scales],
            "mlp_scales": [list(x) for x in chosen.mlp_scales],
            "remove_directions": {str(k): v.tolist() for k, v in chosen.remove_directions.items()}}
        record = RunRecord(kind="factual", model=self.model, model_info=self.model_info, task="factual",
                           params=asdict(self.config), seeds=self.config.seed, duration_s=sum(self.timings.values()),
                           group_id=group_id)
        return AtlasRun(record=record, scores=self.scores, inputs=self.inputs,
                        artifacts={"summary": _jsonable(self.summary()), "mitigation": mit or {}})


def _dedupe_pair(clean: TokenBatch, corrupt: TokenBatch) -> tuple[TokenBatch, TokenBatch]:
    seen, keep = set(), []
    for i in range(len(clean)):
        key = tuple(clean.input_ids[i, : int(clean.lengths[i])].tolist())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return clean.select(keep), corrupt.select(keep)


@dataclass(frozen=True)
class FactualPrompts:
    """The prompts of the analysis, built split by split.

    ``facts``: ``{split: {relation: subjects}}``; ``splits``: ``{split: clean prompts}`` (zero- and
    few-shot; meta ``split`` and ``subject`` per row); ``clean0``/``corrupt0``: the zero-shot prompts
    of every split with their equal-length subject swaps (partners from the same split).
    """

    facts: dict[str, dict[str, list[str]]]
    splits: dict[str, TokenBatch]
    clean0: TokenBatch
    corrupt0: TokenBatch
    heldout_relations: list[str]

    @property
    def all(self) -> TokenBatch:
        return concat_batches(list(self.splits.values()))


def load_relations(lm: LoadedModel, names: list[str] | None) -> dict[str, Relation]:
    """``{spec: Relation}`` for built-in names or relation files, with the pairs the factual task uses."""
    tok = lm.tokenizer
    specs = list(names) if names else list(BUILTIN_RELATIONS)
    return {r: builtin_relation(r, tok) if r in BUILTIN_RELATIONS else load_relation(r, tok, strict=True) for r in specs}


def _split_prompts(lm: LoadedModel, cfg: FactualConfig, split: str, specs: list[str], subjects: dict[str, list[str]],
                   per_relation: int) -> tuple[TokenBatch, TokenBatch, TokenBatch]:
    """(zero-shot clean, zero-shot corrupted, all clean prompts) of one split."""
    n = per_relation * len(specs)
    try:
        ps0 = factual(lm.tokenizer, n=n, seed=cfg.seed, relations=specs, shots=0, metric="logit_diff", subjects=subjects)
        clean0, corrupt0 = _dedupe_pair(ps0.clean_batch(), ps0.corrupted_batch())
        clean0 = replace(clean0, meta=clean0.meta | {"split": [split] * len(clean0)})
        parts = [clean0]
        if cfg.shots:
            psk = factual(lm.tokenizer, n=n, seed=cfg.seed + 1, relations=specs, shots=cfg.shots,
                          require_equal_length=False, subjects=subjects)
            parts.append(_dedupe_pair(psk.clean_batch(), psk.clean_batch())[0])
    except TaskError as err:
        raise TaskError(f"{split} facts ({', '.join(f'{r}: {len(s)}' for r, s in subjects.items())}): {err.problem}",
                        err.hint) from err
    keep = ("target_id", "end_pos", "subject_span", "relation", "shots", "subject")
    parts = [TokenBatch(input_ids=p.input_ids, attention_mask=p.attention_mask,
                        meta={k: p.meta[k] for k in keep} | {"split": [split] * len(p)},
                        texts=p.texts, task=p.task, params=p.params) for p in parts]
    return clean0, corrupt0, concat_batches(parts)


def build_prompts(lm: LoadedModel, cfg: FactualConfig) -> FactualPrompts:
    """Split the facts (:func:`split_relation_facts`), then build each split's prompts from its own facts.

    Per relation, ``n_per_relation`` prompts of each style are shared between its training facts and
    its held-out facts (``test_frac`` of them, at least one); a held-out relation gets all of them.
    """
    if lm.tokenizer is None:
        raise TaskError(f"{lm.name} has no tokenizer", "the factual analysis needs a model with a tokenizer")
    rels = load_relations(lm, cfg.relations)
    names = [r.name for r in rels.values()]
    held = list(cfg.heldout_relations) if cfg.heldout_relations is not None else [names[-1]]
    facts = split_relation_facts({r.name: r.pairs for r in rels.values()}, heldout_relations=held,
                                 test_frac=cfg.test_frac, seed=cfg.seed)
    n_test = max(1, round(cfg.test_frac * cfg.n_per_relation))
    counts = {"train": max(1, cfg.n_per_relation - n_test), "heldout_facts": n_test,
              "heldout_relations": cfg.n_per_relation}
    zero, corrupt, splits = [], [], {}
    for split in FACT_SPLITS:
        subjects = facts[split]
        if not subjects:
            continue
        specs = [spec for spec, r in rels.items() if r.name in subjects]
        c0, r0, prompts = _split_prompts(lm, cfg, split, specs, subjects, counts[split])
        zero.append(c0)
        corrupt.append(r0)
        splits[split] = prompts
    return FactualPrompts(facts, splits, concat_batches(zero), concat_batches(corrupt), held)


def choose_on_train(lm: LoadedModel, cfg: FactualConfig, train: TokenBatch, corpus_ids: torch.Tensor
                    ) -> tuple[Mitigation, list[dict[str, Any]], dict[str, Any]]:
    """Every choice of the mitigation, on the training prompts only: the final layer's suppressor heads
    (measured on ``train``), then :func:`choose_mitigation` with the cost on ``corpus_ids``.
    Returns (chosen, one row per candidate, what the selection saw)."""
    freq = token_frequency(lm.tokenizer, cfg.frequency)
    sup = final_layer_suppression(lm, train, frequency=freq, batch_size=cfg.batch_size)
    heads = [HeadId.parse(n) for n in sup.suppressors() if n.startswith("L")]
    chosen, rows = choose_mitigation(lm, train, corpus_ids, suppressor_heads=heads, max_cost=cfg.max_cost,
                                     max_train=cfg.max_train, seed=cfg.seed, factors=cfg.factors)
    return chosen, rows, {"split": "train", "n_prompts": len(train), "suppressors": sup.suppressors(),
                          "corpus_windows": int(corpus_ids.shape[0]), "max_cost": cfg.max_cost, "factors": list(cfg.factors)}


MIN_CHECK_PAIRS = 4
"""Fewest subject-swap pairs on each side of the rank/check split; with fewer, the check runs on the
ranking pairs and says so (``split`` = "in-sample")."""


def split_pairs(n: int) -> tuple[list[int], list[int]]:
    """(rank rows, check rows) of ``n`` subject-swap pairs: even rows rank the heads, odd rows check them.
    The split needs ``n >= 2 * MIN_CHECK_PAIRS`` (each half then has at least MIN_CHECK_PAIRS rows); with
    fewer pairs every row both ranks and checks."""
    rows = list(range(n))
    if n < 2 * MIN_CHECK_PAIRS:
        return rows, rows
    return rows[0::2], rows[1::2]


def run_factual(lm: LoadedModel, cfg: FactualConfig | None = None, *, log: Callable[[str], None] | None = None) -> FactualReport:
    """Run every analysis; returns the report (scores and inputs ready for the atlas). ``log`` gets one line per stage."""
    cfg = cfg or FactualConfig()
    rep = FactualReport(model=lm.name, config=cfg, model_info=lm.model_info())
    t = time.perf_counter()
    prompts = build_prompts(lm, cfg)
    clean0, corrupt0, allp = prompts.clean0, prompts.corrupt0, prompts.all
    relations = sorted(set(allp.meta["relation"]))
    rep.timings["prompts"] = time.perf_counter() - t
    _log(log, "prompts", rep.timings["prompts"])

    t = time.perf_counter()
    traj = answer_trajectory(lm, allp, batch_size=cfg.batch_size)
    rep.trajectory = traj.summary()
    rep.trajectory_groups = {k: v.summary() for k, v in traj.groups().items()}
    rep.trajectory["mean_prob_by_layer"] = traj.prob.mean(0).tolist()
    rep.trajectory["top1_by_layer"] = (traj.rank == 0).float().mean(0).tolist()
    rep.timings["trajectory"] = time.perf_counter() - t
    _log(log, "trajectory", rep.timings["trajectory"])
    for i, (p, r) in enumerate(zip(traj.prob.mean(0).tolist(), (traj.rank == 0).float().mean(0).tolist(), strict=True)):
        comp, layer = ("embed", 0) if i == 0 else ("layer", i - 1)
        rep.scores += [ScoreRow(component=comp, layer=layer, method="factual_trajectory", metric="prob", value=p, n=len(traj.prob)),
                       ScoreRow(component=comp, layer=layer, method="factual_trajectory", metric="top1", value=r, n=len(traj.prob))]
    rep.scores.append(ScoreRow(component="layer", layer=lm.geometry.n_layers - 1, method="factual_trajectory",
                               metric="drop_share", value=traj.drop_share(), n=len(traj.prob)))

    t = time.perf_counter()
    rank, check = split_pairs(len(clean0))
    arg = argument_passing_heads(lm, clean0.select(rank), corrupted=corrupt0.select(rank), top_k=cfg.top_k,
                                 seed=cfg.seed, max_senders=cfg.max_senders, max_pairs=cfg.max_pairs)
    if check == rank:
        heldout = arg.check | {"split": "in-sample (too few pairs to hold any out)", "n_check": len(check)}
    else:
        heldout = check_heads(lm, clean0.select(check), corrupt0.select(check), arg.top(cfg.top_k), seed=cfg.seed)
        heldout |= {"split": "held-out pairs (not used to rank the heads)", "n_check": len(check)}
    rep.argument = {"table": arg.table(10), "check": heldout, "check_in_sample": arg.check, "ld_clean": arg.ld_clean,
                    "ld_corrupt": arg.ld_corrupt, "n": arg.n, "decode_chance": arg.decode_chance}
    for layer in range(lm.geometry.n_layers):
        for h in range(lm.geometry.n_heads):
            for metric, m in (("path_effect", arg.path_effect), ("attn_subject", arg.attn_subject), ("decode_acc", arg.decode_acc)):
                rep.scores.append(ScoreRow(layer=layer, head=h, method="factual_argument_passing", metric=metric,
                                           value=float(m[layer, h]), n=arg.n))
    rep.timings["argument_passing"] = time.perf_counter() - t
    _log(log, "argument_passing", rep.timings["argument_passing"])

    t = time.perf_counter()
    scan = mlp_layer_scan(lm, clean0, batch_size=cfg.batch_size)
    for d in scan:
        mean_auroc = sum(ic.answer_auroc for ic in d.intercepts.values()) / len(d.intercepts)
        rep.mlp_scan.append({"layer": d.layer, "r2": d.r2, "r2_intercept_only": d.r2_intercept_only, "intercept_auroc": mean_auroc})
        for metric, v in (("r2", d.r2), ("r2_intercept_only", d.r2_intercept_only), ("intercept_answer_auroc", mean_auroc)):
            rep.scores.append(ScoreRow(component="mlp", layer=d.layer, method="factual_mlp_decomposition", metric=metric, value=v, n=d.n))
    top = arg.top(cfg.top_k)
    target_layer = top[0].layer
    dec = decompose_mlp(lm, clean0, layer=target_layer, extra_heads=[h for h in top if h.layer < target_layer],
                        batch_size=cfg.batch_size)
    tok = lm.tokenizer
    rep.decomposition = dec.summary() | {"intercept_top_tokens": {
        r: [tok.decode([i]) for i in ic.top_tokens] for r, ic in dec.intercepts.items()}}
    rep.timings["mlp_decomposition"] = time.perf_counter() - t
    _log(log, "mlp_decomposition", rep.timings["mlp_decomposition"])

    t = time.perf_counter()
    freq = token_frequency(tok, cfg.frequency)
    sup = final_layer_suppression(lm, allp, frequency=freq, batch_size=cfg.batch_size)
    rep.suppression = {"layer": sup.layer, "first_token_attention": sup.first_token_attention, "components": sup.table(),
                       "suppressors": sup.suppressors(), "frequency_proxy": cfg.frequency,
                       "top_tokens": {c.name: [tok.decode([i]) for i in c.top_tokens] for c in sup.components},
                       "bottom_tokens": {c.name: [tok.decode([i]) for i in c.bottom_tokens] for c in sup.components}}
    for c in sup.components:
        comp, head = ("head", int(c.name.split("H")[1])) if c.name.startswith("L") else ("mlp" if c.name.startswith("mlp") else "layer", -1)
        for metric in ("answer_dlogp", "answer_dla", "frequency_corr", "first_token_attention"):
            v = getattr(c, metric)
            if v == v:
                rep.scores.append(ScoreRow(component=comp, layer=sup.layer, head=head, method="factual_suppression",
                                           metric=metric, value=v, n=sup.n))
    rep.timings["suppression"] = time.perf_counter() - t
    _log(log, "suppression", rep.timings["suppression"])

    t = time.perf_counter()
    corpus = natural_text(tok, n=cfg.corpus_windows, seq_len=cfg.window_len, seed=cfg.seed).input_ids
    half = max(1, corpus.shape[0] // 2)
    chosen, rows, selection = choose_on_train(lm, cfg, prompts.splits["train"], corpus[:half])
    rep.mitigation_candidates = rows
    rep.mitigation = evaluate_mitigation(lm, chosen, prompts.splits, corpus[half:] if corpus.shape[0] > 1 else corpus,
                                         seed=cfg.seed)
    rep.mitigation["heldout_relation_names"] = prompts.heldout_relations
    rep.mitigation["selection"] = selection
    rep.mitigation["facts"] = {split: {r: len(s) for r, s in by_rel.items()} for split, by_rel in prompts.facts.items()}
    rep.chosen = chosen
    rep.timings["mitigation"] = time.perf_counter() - t
    _log(log, "mitigation", rep.timings["mitigation"])

    for i in range(len(allp)):
        n_tok = int(allp.lengths[i])
        rep.inputs.append(InputRow(idx=i, token_ids=allp.input_ids[i, :n_tok].tolist(), role="clean",
                                   text=allp.texts[i] if allp.texts else None,
                                   meta={"relation": allp.meta["relation"][i], "target_id": int(allp.meta["target_id"][i]),
                                         "shots": int(allp.meta["shots"][i]), "split": allp.meta["split"][i]}))
    rep.trajectory["relations"] = relations
    return rep


def _log(log: Callable[[str], None] | None, stage: str, seconds: float) -> None:
    if log is not None:
        log(f"{stage} done in {seconds:.1f} s")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and x != x:
        return None
    return x
