"""`headmine fv`: fit function vectors on the shipped tasks, choose heads and the edit layer on the fit
split, and measure zero-shot accuracy with the vector on held-out queries (Todd et al. 2024).

Data (shipped, written for the project): ``apply/data/fv/*.tsv``, one "input<TAB>output" pair a line:
antonym (170 pairs), country_capital (120), country_language (112), singular_plural (162) and
uppercase (295 lower-case words -> the word in capitals), plus the contrast pairs headmine already
ships for contrastive gating (``causal/data/contrast_pairs``: capitalize, present_past, 30 pairs each;
their antonym, country_capital and singular_plural rows are merged into the larger tables above).
Pairs whose answer (with its leading space) is not one token of the model's tokenizer are dropped and
counted (SmolLM2 keeps 66 of 295 uppercase words and 48 of 120 capitals; Gemma 3 keeps 265 and 89).
Each task's pairs are split into fit and held-out parts by input word with a fixed seed
(:func:`headmine.apply.evaluation.group_split`, 30% held out).

Prompts follow the paper's template "Q: {x}\\nA: {y}\\n\\n" with ``shots`` demonstrations (default 10,
fewer when the context is short) drawn from *fit* pairs only; the tokenizer's own special tokens are
used (named choice: the official code prepends a literal ``<|endoftext|>`` to models without a BOS;
SmolLM2 gets none). Per task:

- clean ICL top-1 on fit and held-out queries; queries are kept only where clean ICL is right (spec
  pitfall 6: the filtered counts are reported); a task whose held-out ICL accuracy is below
  ``min_icl`` (default 0.3) gets no function vector ("too weak"), not a result on noise;
- mean z at the last position over the correct clean *fit* prompts; AIE on ``n_trials`` corrupted
  (shuffled-label) *fit* prompts. The head set A is the top |A| by AIE averaged over the usable tasks
  (the paper's "universal" set); |A| defaults to 10/448 of the heads (the paper's 10 of GPT-J's 448);
- ``L_edit`` is the layer whose function vectors give the best mean zero-shot top-1 on the *fit* queries.

Reported on held-out queries only (answered correctly with clean ICL): zero-shot top-1 without a
vector, with the FV (paired difference), with FVs of ``n_random`` random head sets of the same size,
FV minus random; shuffled-label ICL with and without the FV; and the corpus cost (next-token loss on
the embedded corpus with the FV added at every position, as during generation).
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headmine.apply.artifact import HeadArtifact, geometry_of
from headmine.apply.evaluation import (
    corpus_windows,
    difference_row,
    effect_row,
    group_split,
    random_baseline_row,
    random_head_sets,
)
from headmine.apply.fv import (
    FUNCTION_VECTORS,
    adding_vector,
    average_indirect_effect,
    encode_left,
    function_vector,
    last_logits,
    last_z,
    top_heads,
)
from headmine.apply.result import ApplyResult
from headmine.causal.contrastive_gating import word_table
from headmine.core.errors import InputError
from headmine.core.tables import scores_frame

DATA_DIR = Path(__file__).parent / "data" / "fv"
OWN_TASKS = ("antonym", "country_capital", "country_language", "singular_plural", "uppercase")
CONTRAST_TASKS = ("capitalize", "present_past")
MERGED = ("antonym", "country_capital", "singular_plural")
TASKS = OWN_TASKS + CONTRAST_TASKS
Pair = tuple[str, str]


# --------------------------------------------------------------------------- data
def read_pairs(path: Path) -> list[Pair]:
    """"input<TAB>output" rows of a task file (blank lines and rows with fewer than two fields skipped)."""
    try:
        with path.open(encoding="utf-8") as fh:
            rows = [(r[0].strip(), r[1].strip()) for r in csv.reader(fh, delimiter="\t") if len(r) >= 2]
    except UnicodeDecodeError as err:
        raise InputError(f"task file {path} is not UTF-8 text: {err}", "save it as UTF-8") from err
    rows = [(x, y) for x, y in rows if x and y]
    if not rows:
        raise InputError(f"task file {path} has no 'input<TAB>output' rows", "write one pair a line, tab-separated")
    return rows


def task_pairs(task: str) -> list[Pair]:
    """The pairs of a built-in task name or a TSV file path (first occurrence of each input kept)."""
    if task in OWN_TASKS:
        rows = read_pairs(DATA_DIR / f"{task}.tsv") + (word_table(task) if task in MERGED else [])
    elif task in CONTRAST_TASKS:
        rows = word_table(task)
    elif Path(task).is_file():
        rows = read_pairs(Path(task))
    else:
        raise InputError(f"no function-vector task {task!r}", f"use one of {list(TASKS)} or a TSV file of pairs")
    seen: set[str] = set()
    out = []
    for x, y in rows:
        if x not in seen:
            seen.add(x)
            out.append((x, y))
    return out


def single_token_id(tokenizer: Any, answer: str) -> int | None:
    """The id of " answer" if it is one token, else None."""
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def icl_prompt(demos: Sequence[Pair], x: str) -> str:
    """The paper's template: "Q: x\\nA: y\\n\\n" per demonstration, then "Q: x\\nA:"."""
    return "".join(f"Q: {a}\nA: {b}\n\n" for a, b in demos) + f"Q: {x}\nA:"


# --------------------------------------------------------------------------- configuration
@dataclass
class FVConfig:
    """Every parameter of a run (all choices are made on the fit split)."""

    tasks: tuple[str, ...] = TASKS
    shots: int = 10
    n_fit: int = 16
    n_eval: int = 32
    n_trials: int = 5
    top_heads: int | None = None
    layer: int | None = None
    n_random: int = 5
    min_icl: float = 0.3
    heldout_frac: float = 0.3
    shuffled: bool = True
    corpus_windows: int = 8
    seed: int = 0
    batch_size: int = 8
    max_rows: int = 128
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("shots", "n_fit", "n_eval", "n_trials", "n_random", "batch_size", "max_rows"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be at least 1 (got {getattr(self, name)})", f"give a positive {name}")
        if not 0.0 <= self.min_icl <= 1.0:
            raise InputError(f"min_icl {self.min_icl} is not a fraction", "use a number between 0 and 1")
        if not self.tasks:
            raise InputError("no tasks given", f"use some of {list(TASKS)}")


@dataclass
class TaskRun:
    """One task's prompts and measurements (internal)."""

    name: str
    fit_q: list[Pair]
    held_q: list[Pair]
    fit_prompts: list[str]
    held_prompts: list[str]
    fit_shuffled: list[str]
    held_shuffled: list[str]
    info: dict[str, Any]
    fit_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    held_ok: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    mean_z: torch.Tensor | None = None


def _shuffle_labels(demos: Sequence[Pair], rng: random.Random) -> list[Pair]:
    ys = [y for _, y in demos]
    rng.shuffle(ys)
    return [(x, y) for (x, _), y in zip(demos, ys, strict=True)]


def build_task(lm: Any, task: str, cfg: FVConfig) -> TaskRun:
    """Single-token filter, fit/held-out split, queries and their clean and shuffled-label prompts."""
    pairs = task_pairs(task)
    kept = [(x, y) for x, y in pairs if single_token_id(lm.tokenizer, y) is not None]
    info: dict[str, Any] = {"pairs": len(pairs), "single_token": len(kept)}
    if len(kept) < 4:
        return TaskRun(task, [], [], [], [], [], [], info | {"usable": False, "why": "fewer than 4 single-token pairs"})
    fit_idx, held_idx = group_split([x for x, _ in kept], heldout_frac=cfg.heldout_frac, seed=cfg.seed)
    fit, held = [kept[i] for i in fit_idx], [kept[i] for i in held_idx]
    rng = random.Random(f"{cfg.seed}:{task}")
    fit_q = rng.sample(fit, min(cfg.n_fit, len(fit)))
    held_q = rng.sample(held, min(cfg.n_eval, len(held)))
    shots = min(cfg.shots, len(fit) - 1)

    def prompts(queries: list[Pair], k: int) -> tuple[list[str], list[str]]:
        clean, shuffled = [], []
        for x, _ in queries:
            demos = rng.sample([p for p in fit if p[0] != x], k)
            clean.append(icl_prompt(demos, x))
            shuffled.append(icl_prompt(_shuffle_labels(demos, rng), x))
        return clean, shuffled

    while True:  # fewer shots when the longest prompt does not fit the context
        state = rng.getstate()
        fp, fs = prompts(fit_q, shots)
        hp, hs = prompts(held_q, shots)
        longest = max(len(lm.tokenizer(p)["input_ids"]) for p in fp + hp)
        if longest <= lm.geometry.n_ctx or shots <= 1:
            break
        rng.setstate(state)
        shots -= 1
    info |= {"fit_pairs": len(fit), "heldout_pairs": len(held), "fit_queries": len(fit_q),
             "heldout_queries": len(held_q), "shots": shots}
    return TaskRun(task, fit_q, held_q, fp, hp, fs, hs, info)


# --------------------------------------------------------------------------- measurement helpers
def _batched(lm: Any, texts: Sequence[str], fn: Callable[[torch.Tensor, torch.Tensor], Any], batch_size: int) -> list[Any]:
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = encode_left(lm, texts[start:start + batch_size])
        out.append(fn(ids, mask))
    return out


def top1(lm: Any, texts: Sequence[str], answers: Sequence[str], *, batch_size: int, layer: int | None = None,
         vectors: torch.Tensor | None = None, positions: str = "last") -> np.ndarray:
    """Per prompt, 1.0 where the argmax next token is the answer's (single) token; with ``vectors``
    ([d_model] or one per prompt [N, d_model]) added after block ``layer`` when given."""
    if not texts:
        return np.zeros(0)
    targets = torch.tensor([single_token_id(lm.tokenizer, a) for a in answers])
    logits = []
    for start in range(0, len(texts), batch_size):
        ids, mask = encode_left(lm, texts[start:start + batch_size])
        if vectors is None or layer is None:
            logits.append(last_logits(lm, ids, mask))
            continue
        v = vectors if vectors.dim() == 1 else vectors[start:start + batch_size]
        with adding_vector(lm, layer, v, positions=positions):
            logits.append(last_logits(lm, ids, mask))
    return (torch.cat(logits).argmax(-1) == targets).float().numpy()


def window_losses(lm: Any, windows: torch.Tensor, *, batch_size: int = 4) -> np.ndarray:
    """Mean next-token loss (nats) of each corpus window [n, T], under any active hooks."""
    out = []
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size].to(lm.device)
        with torch.no_grad():
            logits = lm.forward(ids, torch.ones_like(ids)).float()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(logits.device), reduction="none")
        out.append(ce.mean(1).cpu())
    return torch.cat(out).numpy()


def default_top_heads(n_heads_total: int) -> int:
    """|A| scaled from the paper's 10 of GPT-J's 448 heads (at least 1)."""
    return max(1, round(10 * n_heads_total / 448))


# --------------------------------------------------------------------------- the run
def run_fv(lm: Any, cfg: FVConfig | None = None, *, log: Callable[[str], Any] = lambda s: None
           ) -> tuple[ApplyResult, HeadArtifact | None]:
    """Fit, choose (on the fit split) and evaluate (on held-out queries) function vectors on ``lm``."""
    cfg = cfg or FVConfig()
    t0 = time.time()
    g = lm.geometry
    if lm.tokenizer is None:
        raise InputError(f"{lm.name} has no tokenizer", "function vectors need a model with a tokenizer")
    if cfg.layer is not None:
        g.check_layer(cfg.layer)
    notes: list[str] = []
    runs = [build_task(lm, t, cfg) for t in cfg.tasks]
    usable: list[TaskRun] = []
    for r in runs:
        if r.info.get("usable") is False:
            notes.append(f"{r.name}: {r.info['why']} ({r.info['single_token']} of {r.info['pairs']}); skipped")
            continue
        log(f"{r.name}: clean ICL on {len(r.fit_prompts)} fit + {len(r.held_prompts)} held-out queries")
        zs, logits = [], []
        for z, lg in _batched(lm, r.fit_prompts, lambda i, m: last_z(lm, i, m), cfg.batch_size):
            zs.append(z)
            logits.append(lg)
        fit_t = torch.tensor([single_token_id(lm.tokenizer, y) for _, y in r.fit_q])
        r.fit_ok = (torch.cat(logits).argmax(-1) == fit_t).numpy()
        r.held_ok = top1(lm, r.held_prompts, [y for _, y in r.held_q], batch_size=cfg.batch_size).astype(bool)
        acc = float(r.held_ok.mean())
        r.info |= {"icl_fit_correct": int(r.fit_ok.sum()), "icl_heldout_correct": int(r.held_ok.sum()),
                   "icl_heldout_acc": acc, "icl_fit_acc": float(r.fit_ok.mean())}
        if r.info["single_token"] < 50:
            notes.append(f"{r.name}: only {r.info['single_token']} of {r.info['pairs']} pairs have a single-token answer "
                         f"for this tokenizer (fewer than 50)")
        if acc < cfg.min_icl or r.fit_ok.sum() < 2 or r.held_ok.sum() < 2:
            r.info["usable"] = False
            notes.append(f"{r.name}: too weak for a function vector: clean {r.info['shots']}-shot ICL top-1 "
                         f"{acc:.2f} on held-out queries (minimum {cfg.min_icl:.2f}), {int(r.fit_ok.sum())} fit prompts right")
            continue
        r.info["usable"] = True
        r.mean_z = torch.cat(zs)[torch.as_tensor(r.fit_ok)].mean(0)
        usable.append(r)
    data = {r.name: r.info for r in runs}
    config = asdict(cfg) | {"tasks": list(cfg.tasks)}
    base = dict(kind="fv", title=FUNCTION_VECTORS.title, paper=FUNCTION_VECTORS.paper, model=lm.name,
                model_info=lm.model_info(), config=config, data=data)
    if not usable:
        notes.append("no task reaches the ICL minimum on this model: no function vector was fitted")
        return ApplyResult(**base, notes=notes, duration_s=time.time() - t0), None

    # --- AIE on corrupted fit prompts, per task, averaged over tasks (the paper's universal head set)
    per_task_aie = {}
    for r in usable:
        assert r.mean_z is not None
        ok = [i for i in range(len(r.fit_q)) if r.fit_ok[i]][:cfg.n_trials]
        log(f"{r.name}: indirect effects of {g.n_layers * g.n_heads} heads on {len(ok)} corrupted prompts")
        prompts = [encode_left(lm, [r.fit_shuffled[i]])[0][0] for i in ok]
        targets = [single_token_id(lm.tokenizer, r.fit_q[i][1]) for i in ok]
        per_task_aie[r.name] = average_indirect_effect(lm, prompts, targets, r.mean_z, max_rows=cfg.max_rows)
        r.info["aie_trials"] = len(ok)
    aie = torch.stack(list(per_task_aie.values())).mean(0)
    k = cfg.top_heads or default_top_heads(g.n_layers * g.n_heads)
    heads = top_heads(aie, k)
    fvs = {r.name: function_vector(lm, r.mean_z, heads) for r in usable if r.mean_z is not None}

    # --- L_edit on the fit queries (zero-shot, ICL-correct ones); all tasks in one batch, one vector per row
    def zero_shot(split: str) -> tuple[list[str], list[str], list[int]]:
        texts, answers, owner = [], [], []
        for i, r in enumerate(usable):
            qs, ok = (r.fit_q, r.fit_ok) if split == "fit" else (r.held_q, r.held_ok)
            for (x, y), o in zip(qs, ok, strict=True):
                if o:
                    texts.append(icl_prompt([], x))
                    answers.append(y)
                    owner.append(i)
        return texts, answers, owner

    def per_task_mean(values: np.ndarray, owner: list[int]) -> float:
        own = np.asarray(owner)
        return float(np.mean([values[own == i].mean() for i in range(len(usable))]))

    zb = max(cfg.batch_size, 64)  # zero-shot prompts are a few tokens long
    fv_rows = torch.stack([fvs[r.name] for r in usable])
    f_texts, f_answers, f_owner = zero_shot("fit")
    fit_base = per_task_mean(top1(lm, f_texts, f_answers, batch_size=zb), f_owner)
    selection: list[dict[str, Any]] = []
    candidates = [cfg.layer] if cfg.layer is not None else list(range(g.n_layers))
    for cand in candidates:
        hit = top1(lm, f_texts, f_answers, batch_size=zb, layer=cand, vectors=fv_rows[f_owner])
        selection.append({"layer": cand, "fit_zero_shot_top1": per_task_mean(hit, f_owner), "no_vector": fit_base})
    best = max(selection, key=lambda s: (s["fit_zero_shot_top1"], -s["layer"]))
    layer = int(best["layer"])
    log(f"L_edit = {layer} (fit zero-shot top-1 {best['fit_zero_shot_top1']:.2f}, no vector {fit_base:.2f})")

    # --- held-out evaluation
    draws = random_head_sets(g.heads(), k, cfg.n_random, seed=cfg.seed, exclude=heads)
    h_texts, h_answers, h_owner = zero_shot("held")
    own = np.asarray(h_owner)
    before_all = top1(lm, h_texts, h_answers, batch_size=zb)
    after_all = top1(lm, h_texts, h_answers, batch_size=zb, layer=layer, vectors=fv_rows[h_owner])
    rand_all = []
    for d in draws:
        rows_d = torch.stack([function_vector(lm, r.mean_z, d) for r in usable if r.mean_z is not None])
        rand_all.append(top1(lm, h_texts, h_answers, batch_size=zb, layer=layer, vectors=rows_d[h_owner]))
    tables: dict[str, list[dict[str, Any]]] = {}
    windows = corpus_windows(lm, n=cfg.corpus_windows, seed=cfg.seed) if cfg.corpus_windows else None
    plain_loss = window_losses(lm, windows) if windows is not None else None
    cost_rows = []
    gains = {}
    for i, r in enumerate(usable):
        assert r.mean_z is not None
        n_all = len(r.held_q)
        sel = own == i
        before, after = before_all[sel], after_all[sel]
        rand = [x[sel] for x in rand_all]
        rows = [effect_row("heldout", f"clean {r.info['shots']}-shot ICL (all {n_all} queries; filter)", "top-1",
                           r.held_ok.astype(float), seed=cfg.seed),
                effect_row("heldout", "zero-shot, no vector", "top-1", before, seed=cfg.seed),
                effect_row("heldout", f"zero-shot + FV ({k} top heads, layer {layer})", "top-1", after, before, seed=cfg.seed),
                random_baseline_row("heldout", f"zero-shot + FV ({k} random heads, {len(draws)} draws)", "top-1", rand,
                                    before, seed=cfg.seed),
                difference_row("heldout", "FV minus random-head FV", "top-1", after, np.stack(rand).mean(0), seed=cfg.seed)]
        gains[r.name] = float(after.mean() - before.mean())
        if cfg.shuffled:
            keep = [j for j in range(n_all) if r.held_ok[j]]
            s_texts, s_ans = [r.held_shuffled[j] for j in keep], [r.held_q[j][1] for j in keep]
            s_before = top1(lm, s_texts, s_ans, batch_size=cfg.batch_size)
            s_after = top1(lm, s_texts, s_ans, batch_size=cfg.batch_size, layer=layer, vectors=fvs[r.name])
            rows += [effect_row("heldout", "shuffled-label ICL, no vector", "top-1", s_before, seed=cfg.seed),
                     effect_row("heldout", "shuffled-label ICL + FV", "top-1", s_after, s_before, seed=cfg.seed)]
        for row in rows[2:]:
            if "significant" in row and not row["significant"]:
                notes.append(f"{r.name}: {row['condition']}: change {row['delta']:+.3f} not significant "
                             f"(95% CI {row['delta_ci'][0]:+.3f}, {row['delta_ci'][1]:+.3f}; n = {row['n']})")
        tables[f"{r.name}: held-out top-1 ({int(sel.sum())} of {n_all} queries right with clean ICL)"] = rows
        if windows is not None and plain_loss is not None:
            with adding_vector(lm, layer, fvs[r.name], positions="all"):
                loss = window_losses(lm, windows)
            cost_rows.append(effect_row("corpus", f"{r.name} FV at every position", "loss (nats/token)", loss, plain_loss,
                                        seed=cfg.seed))
    if cost_rows:
        tables["corpus cost (embedded corpus windows, FV added at every position as during generation)"] = cost_rows

    head_scores = scores_frame([{"layer": layer_, "head": h, "method": "fv_aie", "metric": "aie",
                                 "value": float(aie[layer_, h]), "n": len(usable)}
                                for layer_ in range(g.n_layers) for h in range(g.n_heads)])
    for name, a in per_task_aie.items():
        data[name]["top_aie"] = [[str(h), float(a[h.layer, h.head])] for h in top_heads(a, min(5, a.numel()))]
    chosen = {"top_heads": k, "layer": layer, "fit_zero_shot_top1": best["fit_zero_shot_top1"], "fit_no_vector": fit_base,
              "aie_of_chosen": [round(float(aie[h.layer, h.head]), 5) for h in heads],
              "usable_tasks": [r.name for r in usable]}
    task = max(gains, key=lambda t: (gains[t], t))
    artifact = HeadArtifact(kind="fv", model=lm.name, geometry=geometry_of(g), heads=tuple(heads),
                            params={"layer": layer, "task": task, "positions": "last", "scale": 1.0},
                            tensors={f"fv.{name}": v for name, v in fvs.items()},
                            info={"tasks": list(fvs), "chosen": chosen, "heldout_gain": gains})
    result = ApplyResult(**base, heads=list(heads), chosen=chosen, tables=tables, selection=selection,
                         head_scores=head_scores, notes=notes, duration_s=time.time() - t0)
    return result, artifact
