"""Inference-time intervention (Li et al. 2023, ITI; issue 13 §1): ``headmine steer``, kind ``steer``.

What it does (spec: shared/methods/APPLICATIONS.md §1):

1. **Data.** :file:`data/steer_facts.jsonl`, written for the project: 9 small fact tables and 5
   hand-written item lists over 12 topics (capitals, languages, animal classes, animal sounds,
   arithmetic, chemical symbols, astronomy, biology, calendar, opposites, units, colours), checked by
   hand for truth. A table row (subject, answer) becomes the question ``template.format(subject)``
   with its true answer and 2 false answers drawn from the *other* answers of the same table (a fixed
   ``random.Random(0)``, so the data set does not depend on ``--seed``); item lists give their false
   answers explicitly. 196 questions x 3 answers = **588 statements** ``"Q: {question} A: {answer}."``
   grouped by question (MC1 chance is 1/3). Questions are split into fit and held-out parts by whole
   questions with :func:`~headmine.apply.evaluation.group_split` (seed ``--seed``, 30% held out).
2. **Probes.** z (the o_proj input) of every head at the last token of each fit statement; one
   scikit-learn ``LogisticRegression`` per head (defaults, ``max_iter=1000``, ``random_state=seed``,
   raw d_head features, as the paper's code) trained on 80% of the *fit* questions and scored on the
   other 20% (a validation part of the fit split, split by question). Heads ranked by validation
   accuracy (ties: lower layer, then head).
3. **Direction and scale.** theta = mean(z | true) - mean(z | false) over all fit statements,
   normalised (the paper's mass-mean shift); sigma = population std (ddof 0) of <z, theta> over all fit
   statements, true and false mixed. The paper takes sigma over a tuning bank that includes the test
   fold (pitfall 4, a mild leak); here sigma uses the fit split only, so no held-out item touches it.
4. **Edit.** ``Steer`` adds alpha * sigma_h * theta_h to each chosen head's z at the chosen positions
   (pitfall 1): ``generated`` (the default) shifts t >= P-1, where P is the prompt length: the last
   prompt token and every answer token, which is what the paper's generation does under a KV cache
   (position -1 of every forward call) and the same edit in teacher-forced scoring; ``answer`` shifts
   only the answer's own tokens t >= P (close to the paper's legacy MC scoring, which starts a token or
   two later; a one-token answer is then scored without any shift); ``all`` shifts every position.
   The corpus cost is measured with the shift at every position, as the paper's CE/KL.
   Applied from a saved artifact during ``generate``: ``generated`` = position -1 of every forward,
   ``answer`` = position -1 of the one-token decode steps only, ``all`` = every position.
5. **Choice on the fit split.** For each K in ``ks`` and alpha in ``alphas``: fit-split MC1 (the true
   answer's summed answer-token log-prob beats every false one), MC2 (the true answer's share of
   probability mass) and the corpus cost (next-token loss increase on the project's corpus windows).
   Chosen: the highest fit MC1 (then MC2, then lower cost) among configurations within the cost cap
   (if none is within it, the cheapest, with a note). The cost is measured first; configurations over
   the cap are not scored on the fit split (most of the run's time is that scoring).
6. **Held-out table.** MC1 and MC2 per held-out question before/after (paired bootstrap CIs), the
   same alpha on ``n_random`` random K-head sets (each with its own fit-split sigma and mass-mean
   direction; per-question mean over the draws), chosen minus random, the reversed shift (-alpha),
   and the corpus loss per window before/after.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from headmine.apply.artifact import HeadArtifact, geometry_of
from headmine.apply.evaluation import (
    corpus_windows,
    difference_row,
    effect_row,
    group_split,
    random_baseline_row,
    random_head_sets,
)
from headmine.apply.registry import Application, register_application
from headmine.apply.result import ApplyResult
from headmine.capture import run_capture
from headmine.capture.records import CaptureSpec
from headmine.causal.engine import intervening
from headmine.causal.interventions import Steer
from headmine.core.errors import InputError
from headmine.core.ids import HeadId, Site
from headmine.core.tables import head_matrix_frame

NAME = "steer"
TITLE = "Inference-time intervention (truthfulness steering)"
PAPER = "Li et al. 2023 (ITI, arXiv 2306.03341)"
POSITIONS = ("generated", "answer", "all")
DATA = Path(__file__).parent / "data" / "steer_facts.jsonl"


@dataclass(frozen=True)
class Statement:
    """One labelled answer to one question (``group`` = the question's index)."""

    topic: str
    question: str
    answer: str
    label: int  # 1 true, 0 false
    group: int

    @property
    def prompt(self) -> str:
        return f"Q: {self.question} A:"

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.answer}."


def load_statements(path: str | Path | None = None, *, n_false: int = 2) -> list[Statement]:
    """The statements of a fact file (default the shipped one): per question, the true answer first."""
    p = Path(path) if path is not None else DATA
    if not p.is_file():
        raise InputError(f"no fact file {p}", "give a .jsonl file of fact tables (see headmine.apply.steer)")
    rng = random.Random(0)
    out: list[Statement] = []
    n_groups = 0
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for ln in lines:
            rec = json.loads(ln)
            topic = str(rec["topic"])
            if "facts" in rec:
                answers = sorted({str(a) for _, a in rec["facts"]})
                qs = [(rec["question"].format(s), str(a), rng.sample([x for x in answers if x != a], n_false))
                      for s, a in rec["facts"]]
            else:
                qs = [(str(q), str(t), [str(f) for f in fs]) for q, t, fs in rec["items"]]
            for q, true, false in qs:
                out.extend([Statement(topic, q, true, 1, n_groups)] + [Statement(topic, q, f, 0, n_groups) for f in false])
                n_groups += 1
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{p} is not a fact file: {type(err).__name__}: {err}",
                         'each line: {"topic", "question": "...{}...", "facts": [[subject, answer], ...]} '
                         'or {"topic", "items": [[question, true, [false, ...]], ...]}') from err
    if n_groups < 4:
        raise InputError(f"{p} holds fewer than 4 questions", "give more questions")
    return out


def encode(tokenizer: Any, statements: Sequence[Statement]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each statement and its prompt length P (the answer starts at position P); the
    ids are the prompt's followed by the answer's, so the boundary is exact."""
    seqs, plens = [], []
    for s in statements:
        full = tokenizer(s.text)["input_ids"]
        pids = tokenizer(s.prompt)["input_ids"]
        if full[:len(pids)] != pids:
            full = pids + tokenizer(f" {s.answer}.", add_special_tokens=False)["input_ids"]
        seqs.append(list(full))
        plens.append(len(pids))
    return seqs, plens


def _pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def last_token_z(lm: Any, seqs: Sequence[Sequence[int]], *, batch_size: int = 32) -> torch.Tensor:
    """z of every head at each sequence's last token: [N, n_layers, n_heads, d_head] (float32, CPU)."""
    g = lm.geometry
    spec = CaptureSpec(sites=frozenset({Site.Z}), query_positions="last", keep_logits=False)
    out = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = _pad(seqs[start:start + batch_size], 0)
        rec = run_capture(lm, spec, ids, mask)
        out.append(torch.stack([rec.z[layer][:, 0].float().cpu() for layer in range(g.n_layers)], 1))
    return torch.cat(out)


def probe_accuracy(z: torch.Tensor, labels: Sequence[int], groups: Sequence[Any], *, val_frac: float = 0.2,
                   seed: int = 0) -> tuple[torch.Tensor, int, float]:
    """Validation accuracy [L, H] of one logistic probe per head (trained on 1 - ``val_frac`` of the
    groups, scored on the rest: split by whole groups), the number of probes that did not converge, and
    chance: the validation accuracy of always answering the majority label."""
    y = np.asarray(labels)
    tr, va = group_split(list(groups), heldout_frac=val_frac, seed=seed)
    if len(set(y[tr])) < 2 or len(set(y[va])) < 1:
        raise InputError("the probes' training part holds one label only", "give true and false statements per question")
    x = z.double().numpy()
    n_layers, n_heads = z.shape[1], z.shape[2]
    acc = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    unconverged = 0
    with threadpool_limits(limits=1):  # one BLAS thread: small fits, 20x faster than threads that contend
        for layer in range(n_layers):
            for head in range(n_heads):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x[tr, layer, head], y[tr])
                unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
                acc[layer, head] = float((clf.predict(x[va, layer, head]) == y[va]).mean())
    chance = float(max(y[va].mean(), 1 - y[va].mean()))
    return acc, unconverged, chance


def mass_mean(z: torch.Tensor, labels: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """theta [L, H, d] (true mean minus false mean, unit norm) and sigma [L, H] (ddof-0 std of the
    projections of all rows on theta)."""
    y = torch.as_tensor(list(labels), dtype=torch.bool)
    zd = z.double()
    diff = zd[y].mean(0) - zd[~y].mean(0)
    theta = diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    proj = (zd * theta).sum(-1)
    return theta.float(), proj.std(0, correction=0).float()


def rank_heads(acc: torch.Tensor) -> list[HeadId]:
    """Heads by accuracy, best first (ties: lower layer, then lower head)."""
    n_heads = acc.shape[1]
    flat = acc.flatten().tolist()
    return [HeadId(i // n_heads, i % n_heads) for i in sorted(range(len(flat)), key=lambda i: (-flat[i], i))]


@dataclass(frozen=True)
class SteerFit:
    """Probe accuracies, directions and scales of every head (from fit statements only)."""

    acc: torch.Tensor
    theta: torch.Tensor
    sigma: torch.Tensor
    order: list[HeadId]
    unconverged: int = 0
    chance: float = 0.5

    def shifts(self, heads: Sequence[HeadId]) -> torch.Tensor:
        """sigma_h * theta_h per head [K, d_head]: alpha times this is added to z."""
        return torch.stack([self.sigma[h.layer, h.head] * self.theta[h.layer, h.head] for h in heads])


def fit_steering(lm: Any, seqs: Sequence[Sequence[int]], labels: Sequence[int], groups: Sequence[Any], *,
                 val_frac: float = 0.2, seed: int = 0, batch_size: int = 32) -> SteerFit:
    """Probes, ranking, directions and scales from the statements ``seqs`` (fit split only)."""
    z = last_token_z(lm, seqs, batch_size=batch_size)
    acc, unconverged, chance = probe_accuracy(z, labels, groups, val_frac=val_frac, seed=seed)
    theta, sigma = mass_mean(z, labels)
    return SteerFit(acc=acc, theta=theta, sigma=sigma, order=rank_heads(acc), unconverged=unconverged, chance=chance)


@dataclass(frozen=True, kw_only=True)
class DecodeSteer(Steer):
    """Steer only in one-token forward calls (the decode steps of cached generation: t >= P)."""

    def apply(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        return super().apply(layer, z) if z.shape[1] == 1 else z


def steer_positions(mode: str, plens: Sequence[int], seq_len: int) -> torch.Tensor | None:
    """Teacher-forced positions [B, m] to shift, from each row's start to ``seq_len - 1`` (shorter rows
    repeat their last position); None = every position."""
    if mode not in POSITIONS:
        raise InputError(f"positions {mode!r} is not one of {', '.join(POSITIONS)}", "use generated, answer or all")
    if mode == "all":
        return None
    starts = [p - 1 if mode == "generated" else p for p in plens]
    m = seq_len - min(starts)
    return torch.tensor([[s + min(i, seq_len - 1 - s) for i in range(m)] for s in starts], dtype=torch.long)


def answer_logprobs(lm: Any, seqs: Sequence[Sequence[int]], plens: Sequence[int], heads: Sequence[HeadId] = (),
                    shifts: torch.Tensor | None = None, *, alpha: float = 0.0, positions: str = "generated",
                    batch_size: int = 32) -> np.ndarray:
    """Summed log-prob of each statement's answer tokens given its prompt [N], under the shift
    ``alpha * shifts`` on ``heads`` at ``positions`` (no heads: the plain model)."""
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk, pl = seqs[start:start + batch_size], plens[start:start + batch_size]
        ids, mask = _pad(chunk, 0)
        ivs = []
        if heads:
            ivs = [Steer(heads=tuple(heads), vector=shifts, alpha=alpha,
                         positions=steer_positions(positions, pl, ids.shape[1]))]
        with torch.no_grad(), intervening(lm, ivs):
            logits = lm.forward(ids, mask)
        for i, (s, p) in enumerate(zip(chunk, pl, strict=True)):
            tgt = torch.tensor(s[p:], dtype=torch.long, device=logits.device)
            logp = torch.log_softmax(logits[i, p - 1:len(s) - 1].float(), -1)  # only the answer's rows: big vocabularies
            out.append(float(logp.gather(-1, tgt[:, None]).sum()))
    return np.asarray(out)


def mc_scores(logprobs: np.ndarray, labels: Sequence[int], groups: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per question (in first-seen order): MC1 (1 if the true answer's log-prob beats every false one)
    and MC2 (the true answers' share of the probability mass)."""
    order: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    mc1, mc2 = [], []
    y = np.asarray(labels)
    for idx in order.values():
        lp, lab = logprobs[idx], y[idx]
        mc1.append(float(lp[lab == 1].max() > lp[lab == 0].max()))
        p = np.exp(lp - lp.max())
        mc2.append(float(p[lab == 1].sum() / p.sum()))
    return np.asarray(mc1), np.asarray(mc2)


def window_losses(lm: Any, windows: torch.Tensor, heads: Sequence[HeadId] = (), shifts: torch.Tensor | None = None,
                  *, alpha: float = 0.0, batch_size: int = 4) -> np.ndarray:
    """Mean next-token loss (nats) of each corpus window [n], shifted at every position."""
    ivs = [Steer(heads=tuple(heads), vector=shifts, alpha=alpha)] if heads else []
    out = []
    with torch.no_grad(), intervening(lm, ivs):
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start:start + batch_size]
            logits = lm.forward(ids, torch.ones_like(ids)).float().cpu()
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].cpu(), reduction="none")
            out.append(ce.mean(1).double().numpy())
    return np.concatenate(out)


class SteerApplication(Application):
    name = NAME
    title = TITLE
    paper = PAPER
    head_types = ("Truthfulness Head",)

    @contextmanager
    def apply(self, lm: Any, artifact: HeadArtifact) -> Iterator[None]:
        """Add alpha * sigma * theta to the artifact's heads: at position -1 of every forward call
        (``generated``), of the one-token decode steps (``answer``) or everywhere (``all``)."""
        mode = str(artifact.params.get("positions", "generated"))
        if mode not in POSITIONS:
            raise InputError(f"the steer artifact's positions {mode!r} is not one of {', '.join(POSITIONS)}",
                             "save the artifact again with headmine steer")
        if not artifact.heads:
            yield
            return
        kind = DecodeSteer if mode == "answer" else Steer
        iv = kind(heads=tuple(artifact.heads), vector=artifact.tensors["shift"], alpha=float(artifact.params["alpha"]),
                  positions=None if mode == "all" else (-1,))
        with intervening(lm, [iv]):
            yield


APP = register_application(SteerApplication())


@dataclass(frozen=True)
class SteerConfig:
    """Settings of one ``steer`` run (defaults sized for SmolLM2 on 2 CPU cores, a few minutes)."""

    ks: tuple[int, ...] = (4, 8, 16, 32)
    alphas: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 15.0)
    max_cost: float = 0.1
    positions: str = "generated"
    heldout_frac: float = 0.3
    val_frac: float = 0.2
    n_random: int = 5
    n_questions: int | None = None
    data: str | None = None
    corpus_n: int = 8
    corpus_len: int = 64
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise InputError(f"ks {self.ks} must be head counts >= 1", "use e.g. 4,8,16,32")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise InputError(f"alphas {self.alphas} must be positive", "use e.g. 1,2,5,10,15 (the reverse shift is reported too)")
        if self.positions not in POSITIONS:
            raise InputError(f"positions {self.positions!r} is not one of {', '.join(POSITIONS)}", "use generated, answer or all")
        if self.n_random < 1:
            raise InputError("n_random must be at least 1", "use e.g. 5")
        if self.max_cost < 0:
            raise InputError(f"max_cost {self.max_cost} is negative", "give a loss increase in nats/token, e.g. 0.1")
        if self.n_questions is not None and self.n_questions < 8:
            raise InputError(f"{self.n_questions} questions are too few to split three ways", "use at least 8")


@dataclass
class SteerRun:
    """What :func:`run_steer` returns."""

    result: ApplyResult
    artifact: HeadArtifact
    fit: SteerFit
    data: dict[str, Any] = field(default_factory=dict)


def run_steer(lm: Any, cfg: SteerConfig | None = None, *, log: Any = None) -> SteerRun:
    """Fit ITI on the fit questions, choose K and alpha on them, and measure on the held-out questions."""
    cfg = cfg or SteerConfig()
    say = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    g = lm.geometry
    if lm.tokenizer is None:
        raise InputError(f"{lm.name} has no tokenizer", "steer needs a model with a tokenizer")
    ks = sorted({min(k, g.n_total_heads) for k in cfg.ks})
    statements = load_statements(cfg.data)
    if cfg.n_questions is not None:  # a stratified subset: every k-th question, for small runs
        n_q = len({s.group for s in statements})
        keep = set(np.linspace(0, n_q - 1, min(cfg.n_questions, n_q)).round().astype(int).tolist())
        statements = [s for s in statements if s.group in keep]
    seqs, plens = encode(lm.tokenizer, statements)
    lm.check_length(max(len(s) for s in seqs))
    labels, groups = [s.label for s in statements], [s.group for s in statements]
    fit_idx, held_idx = group_split(groups, heldout_frac=cfg.heldout_frac, seed=cfg.seed)
    fs, fp, fl, fg = ([x[i] for i in fit_idx] for x in (seqs, plens, labels, groups))
    hs, hp, hl, hg = ([x[i] for i in held_idx] for x in (seqs, plens, labels, groups))

    say(f"probing {g.n_total_heads} heads on {len(fs)} fit statements")
    fit = fit_steering(lm, fs, fl, fg, val_frac=cfg.val_frac, seed=cfg.seed, batch_size=cfg.batch_size)
    windows = corpus_windows(lm, n=cfg.corpus_n, seq_len=cfg.corpus_len, seed=cfg.seed)
    base_w = window_losses(lm, windows)
    base_fit = mc_scores(answer_logprobs(lm, fs, fp, batch_size=cfg.batch_size), fl, fg)

    selection: list[dict[str, Any]] = [{"k": 0, "alpha": 0.0, "fit_mc1": float(base_fit[0].mean()),
                                        "fit_mc2": float(base_fit[1].mean()), "cost": 0.0, "within_cap": True}]

    def score_fit(row: dict[str, Any]) -> None:
        heads = fit.order[:row["k"]]
        mc1, mc2 = mc_scores(answer_logprobs(lm, fs, fp, heads, fit.shifts(heads), alpha=row["alpha"],
                                             positions=cfg.positions, batch_size=cfg.batch_size), fl, fg)
        row |= {"fit_mc1": float(mc1.mean()), "fit_mc2": float(mc2.mean())}

    for k in ks:  # the corpus cost first (cheap): configurations over the cap are not scored on the fit split
        heads = fit.order[:k]
        for a in cfg.alphas:
            cost = float(window_losses(lm, windows, heads, fit.shifts(heads), alpha=a).mean() - base_w.mean())
            row = {"k": k, "alpha": a, "fit_mc1": None, "fit_mc2": None, "cost": cost, "within_cap": cost <= cfg.max_cost}
            if row["within_cap"]:
                say(f"fit split: K={k}, alpha={a} (cost {cost:+.3f})")
                score_fit(row)
            selection.append(row)
    cands = [r for r in selection[1:] if r["within_cap"]]
    notes: list[str] = []
    if not cands:
        cands = [min(selection[1:], key=lambda r: r["cost"])]
        score_fit(cands[0])
        notes.append(f"no configuration stays within the corpus cost cap of {cfg.max_cost} nats/token: the cheapest "
                     f"(K={cands[0]['k']}, alpha={cands[0]['alpha']}, cost {cands[0]['cost']:+.3f}) is reported")
    best = max(cands, key=lambda r: (r["fit_mc1"], r["fit_mc2"], -r["cost"]))
    k, alpha = int(best["k"]), float(best["alpha"])
    sh = fit.shifts(heads := fit.order[:k])
    if best["fit_mc1"] <= selection[0]["fit_mc1"]:
        notes.append(f"on the fit split no configuration raised MC1 above the unsteered {selection[0]['fit_mc1']:.3f}")
    say(f"held-out: K={k}, alpha={alpha}, {cfg.n_random} random head sets")

    def held(hd: Sequence[HeadId] = (), s: torch.Tensor | None = None, a: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        return mc_scores(answer_logprobs(lm, hs, hp, hd, s, alpha=a, positions=cfg.positions,
                                         batch_size=cfg.batch_size), hl, hg)

    (b1, b2), (c1, c2), (r1, r2) = held(), held(heads, sh, alpha), held(heads, sh, -alpha)  # r: the reverse shift
    draws = random_head_sets(g.heads(), k, cfg.n_random, seed=cfg.seed)
    rnd = [held(d, fit.shifts(d), alpha) for d in draws]
    cw = window_losses(lm, windows, heads, sh, alpha=alpha)
    rw = [window_losses(lm, windows, d, fit.shifts(d), alpha=alpha) for d in draws]
    s, cond = cfg.seed, f"top {k} heads, alpha={alpha:g}"
    t_mc = [effect_row("heldout", "unsteered", "MC1", b1, seed=s), effect_row("heldout", cond, "MC1", c1, b1, seed=s),
            random_baseline_row("heldout", f"random {k} heads, alpha={alpha:g}", "MC1", [r[0] for r in rnd], b1, seed=s),
            effect_row("heldout", f"top {k} heads, alpha={-alpha:g} (reverse)", "MC1", r1, b1, seed=s),
            effect_row("heldout", "unsteered", "MC2", b2, seed=s), effect_row("heldout", cond, "MC2", c2, b2, seed=s),
            random_baseline_row("heldout", f"random {k} heads, alpha={alpha:g}", "MC2", [r[1] for r in rnd], b2, seed=s),
            effect_row("heldout", f"top {k} heads, alpha={-alpha:g} (reverse)", "MC2", r2, b2, seed=s)]
    t_diff = [difference_row("heldout", "top minus random heads", "MC1", c1, np.stack([r[0] for r in rnd]).mean(0), seed=s),
              difference_row("heldout", "top minus random heads", "MC2", c2, np.stack([r[1] for r in rnd]).mean(0), seed=s)]
    t_cost = [effect_row("corpus", cond, "loss", cw, base_w, seed=s),
              random_baseline_row("corpus", f"random {k} heads, alpha={alpha:g}", "loss", rw, base_w, seed=s)]
    for r in t_mc[1:4] + t_mc[5:8] + t_diff:
        if not r["significant"]:
            notes.append(f"not significant: {r['condition']}, {r['metric']} change {r['delta']:+.3f} "
                         f"(95% CI [{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}])")
    best_acc = float(fit.acc.max())
    if best_acc <= fit.chance + 0.05:
        notes.append(f"the best probe's validation accuracy {best_acc:.3f} is within 0.05 of chance ({fit.chance:.3f}, "
                     "always the majority label): the heads do not carry truth linearly at this size")
    if fit.unconverged:
        notes.append(f"{fit.unconverged} of {g.n_total_heads} probes did not converge in 1000 iterations")

    n_q = len(set(groups))
    data_info = {"source": str(cfg.data or "headmine/apply/data/steer_facts.jsonl"), "statements": len(statements),
                 "questions": n_q, "topics": len({s.topic for s in statements}),
                 "fit_statements": len(fs), "fit_questions": len(set(fg)), "heldout_statements": len(hs),
                 "heldout_questions": len(set(hg)), "probe_val_frac": cfg.val_frac,
                 "corpus_windows": int(windows.shape[0]), "corpus_len": cfg.corpus_len,
                 "best_probe_acc": best_acc, "probe_chance": fit.chance, "probes_unconverged": fit.unconverged}
    chosen = {"K": k, "alpha": alpha, "positions": cfg.positions, "max_cost": cfg.max_cost,
              "fit_mc1": best["fit_mc1"], "fit_cost": best["cost"]}
    scores = pd.concat([head_matrix_frame(fit.acc, method=NAME, metric="probe_val_acc", n=len(fs)),
                        head_matrix_frame(fit.sigma, method=NAME, metric="sigma", n=len(fs))], ignore_index=True)
    result = ApplyResult(
        kind=NAME, title=TITLE, paper=PAPER, model=lm.name, model_info=lm.model_info(), config=asdict(cfg),
        heads=list(heads), chosen=chosen,
        tables={"held-out truthful choice (MC1, MC2) before/after": t_mc, "top heads against random heads (paired)": t_diff,
                "corpus loss (shift at every position)": t_cost},
        selection=selection, head_scores=scores, notes=notes, data=data_info, duration_s=time.perf_counter() - t0)
    artifact = HeadArtifact(
        kind=NAME, model=lm.name, geometry=geometry_of(g), heads=tuple(heads),
        params={"alpha": alpha, "positions": cfg.positions, "K": k},
        tensors={"shift": sh, "theta": torch.stack([fit.theta[h.layer, h.head] for h in heads]),
                 "sigma": torch.stack([fit.sigma[h.layer, h.head] for h in heads]), "probe_acc": fit.acc.float()},
        info={"probe_acc": [float(fit.acc[h.layer, h.head]) for h in heads], "fit_mc1": best["fit_mc1"],
              "data": data_info})
    return SteerRun(result=result, artifact=artifact, fit=fit, data=data_info)
