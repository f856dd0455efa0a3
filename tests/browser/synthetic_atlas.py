"""A schema-true synthetic atlas (written through Atlas.write_run) for report tests: no model needed.

Runs mirror what the pipeline writes: a scan (detector scores, causal set rows, labels, inputs,
``causal``/``detectors``/``timings``/``attn_examples`` artifacts), IOI ablation, patching,
attribution and DLA runs, a CHG run (G/F/N/I scores, labels, curves, targeted ablation) and a
second model for comparisons.

Known answers the report tests check:
- L2H1 and L3H4 are confirmed induction heads (the induction check passed for them; margin
  (1.4 - 0.1167) / 0.07 = 18.3 sd); L1H2 is a previous-token head whose check *failed*, and the
  attention-sink labels (L0H0, L0H3) have no check: both are evidence only.
- IOI: every method except DLA ranks ``IOI_ORDER`` first; ablation of L3H4 lowers the logit
  difference by 2.4 (a negative effect that must rank 1 of 24, 100th percentile); ablation,
  patching and attribution share 6 of 6 top heads, DLA shares 3 of 6 with them.
- Ties: the retrieval score is exactly 0 on 23 heads (rank 2 of 24, tied with 22, 48th percentile).
- Head pages: an ``attention`` run (as `mine` writes it) stores IOI examples for the ``IOI_ORDER``
  heads, and L3H4's output promotes ``IOI_PROMOTES``; L0H5 is in CHG's top 20 but has no example.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headmine.atlas import Atlas, InputRow, LabelRow, RunRecord, ScoreRow

EVIL = "<script>alert(1)</script> \"quoted\" & 'single' </script><!-- \u2028x"
N_LAYERS, N_HEADS = 4, 6
INDUCTION = [(2, 1), (3, 4)]
PREV = [(1, 2)]


def _geometry(n_layers: int = N_LAYERS, n_heads: int = N_HEADS) -> dict:
    return {"source": "synthetic", "file_hash": "0" * 12, "dtype": "float32", "attn_implementation": "eager",
            "model_type": "llama", "geometry": {"n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": 2,
                                                "d_head": 8, "d_model": 48}}


def _map(rng: np.random.Generator, hot: list[tuple[int, int]], base: float = 0.05, hot_v: float = 0.9,
         n_layers: int = N_LAYERS, n_heads: int = N_HEADS) -> np.ndarray:
    m = rng.uniform(0, base * 2, size=(n_layers, n_heads))
    for layer, head in hot:
        if layer >= n_layers or head >= n_heads:
            continue
        m[layer, head] = hot_v - rng.uniform(0, 0.1)
    return m


def _rows(method: str, metric: str, m: np.ndarray, n: int = 16) -> list[ScoreRow]:
    return [ScoreRow(layer=layer, head=head, method=method, metric=metric, value=float(v), n=n, stderr=0.01)
            for (layer, head), v in np.ndenumerate(m)]


def _attn(tokens: list[str], kind: str, period: int | None = None) -> list[list[float]]:
    n = len(tokens)
    rows = []
    half = period or n // 2
    for q in range(n):
        row = [0.0] * (q + 1)
        if kind == "prev" and q > 0:
            row[q - 1] = 0.9
            row[0] += 0.1
        elif kind == "induction" and q >= half and q - half + 1 < n:
            row[min(q, q - half + 1)] = 0.85
            row[0] += 0.15
        else:
            row[0] = 1.0
        rows.append(row)
    return rows


def write_scan(db: Atlas, model: str, seed: int = 0, *, text: str = EVIL, n_layers: int = N_LAYERS,
               n_heads: int = N_HEADS) -> int:
    rng = np.random.default_rng(seed)
    ind = _map(rng, INDUCTION, n_layers=n_layers, n_heads=n_heads)
    prev = _map(rng, PREV, n_layers=n_layers, n_heads=n_heads)
    dup = _map(rng, [(1, 0)], n_layers=n_layers, n_heads=n_heads)
    sink = _map(rng, [(0, 0), (0, 3)], base=0.3, n_layers=n_layers, n_heads=n_heads)
    scores = _rows("induction", "score", ind) + _rows("previous_token", "score", prev)
    scores += _rows("duplicate_token", "score", dup) + _rows("attention_sink", "score", sink)
    retr = np.zeros((n_layers, n_heads))
    retr[min(3, n_layers - 1), min(4, n_heads - 1)] = 0.4  # every other head ties at exactly 0
    scores += _rows("retrieval", "score", retr)
    scores.append(ScoreRow(layer=0, head=0, method="induction", metric="score_nan_demo", value=float("nan")))
    scores += [ScoreRow(component="set", layer=-1, head=-1, method="causal:induction", metric=f"loss:{k}", value=v)
               for k, v in (("clean", 2.1), ("topk_effect", 1.4), ("random_mean", 0.1))]
    scores += [ScoreRow(component="mlp", layer=layer, method="dla", metric="logit", value=0.1 * layer) for layer in range(n_layers)]
    labels = [LabelRow(layer=layer, head=head, head_type="Induction Head", method="induction", value=float(ind[layer, head]),
                       threshold=0.4, note="causal: confirmed (top-2 +1.4 vs random +0.1)")
              for layer, head in INDUCTION if layer < n_layers and head < n_heads]
    labels += [LabelRow(layer=1, head=2, head_type="previous token head", method="previous_token",
                        value=float(prev[1, 2]), threshold=0.4, note=text)]
    labels += [LabelRow(layer=0, head=h, head_type="Attention Sink", method="attention_sink", value=float(sink[0, h]),
                        threshold=0.5) for h in (0, 3)]
    tokens = ["<s>", " The", " cat", " sat", " &", " <b>", text, " The", " cat", " sat", " &", " <b>",
              "\u202eevil\u202c", "x" * 3000]  # a bidi override and a very long token
    artifacts = {
        "causal": {"induction": {"detector": "induction", "metric": "loss", "heads": ["L2H1", "L3H4"], "k": 2,
                                 "clean": 2.1, "topk_effect": 1.4, "random_effects": [0.1, 0.05, 0.2],
                                 "random_mean": 0.1167, "random_std": 0.07, "confirmed": True, "expected_sign": 1},
                   "previous_token": {"detector": "previous_token", "metric": "loss", "heads": ["L1H2"], "k": 1,
                                      "clean": 2.1, "topk_effect": 0.01, "random_effects": [0.1, 0.05],
                                      "random_mean": 0.075, "random_std": 0.03, "confirmed": False, "expected_sign": 1}},
        "timings": {"repeated_tokens": 1.5, "natural_text": 0.7},
        "detectors": {"induction": {"head_type": "Induction Head", "stage": "Latent Reasoning", "task": "repeated_tokens",
                                    "threshold": 0.4, "definition": "attention to the token after the previous copy"}},
        "attn_examples": {
            "examples": [{"name": "repeated <tokens>", "text": text, "tokens": tokens}],
            "patterns": {"L2H1": [_attn(tokens, "induction", period=6)], "L1H2": [_attn(tokens, "prev")],
                         "L0H0": [_attn(tokens, "sink")]},
        },
    }
    inputs = [InputRow(idx=0, token_ids=[1, 2, 3, 4], role="repeated_tokens", text=text),
              InputRow(idx=1, token_ids=[5, 6, 7], role="repeated_tokens"),
              InputRow(idx=0, token_ids=[9, 8], role="natural_text", text="plain & simple")]
    run = RunRecord(kind="scan", model=model, model_info=_geometry(n_layers, n_heads), task="causal:ioi,causal:natural_text,causal:repeated_tokens,ioi_names,natural_text,repeated_tokens,text_tokens",
                    params={"config": {"batch_size": 8, "note": text}}, seeds={"seed": seed}, duration_s=3.2,
                    notes=f"synthetic scan {text}")
    return db.write_run(run, scores=scores, labels=labels, inputs=inputs, artifacts=artifacts)


IOI_ORDER = [(3, 4), (2, 1), (3, 0), (1, 5), (2, 3), (0, 2), (1, 1), (2, 5)]
"""The IOI heads by importance, most important first (L3H4 is the answer: ablation -2.4)."""
DLA_TOP = [(3, 4), (2, 1), (3, 0), (0, 0), (0, 1), (0, 3)]
"""DLA's top 6: it shares 3 of the other methods' top-6 (L3H4, L2H1, L3H0)."""


def ioi_importance(order: list[tuple[int, int]], top: float = 2.4) -> np.ndarray:
    """A [layer, head] map with distinct importances: ``order`` first (top, top - 0.3, ...), then every
    other head at a small distinct value, so each method's ranking is exactly known."""
    imp = np.zeros((N_LAYERS, N_HEADS))
    for i, (layer, head) in enumerate(order):
        imp[layer, head] = top - 0.3 * i
    rest = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS) if (layer, head) not in order]
    for i, (layer, head) in enumerate(rest):
        imp[layer, head] = 0.02 * (len(rest) - i) / len(rest)
    return imp


def write_causal(db: Atlas, model: str, seed: int = 1) -> list[int]:
    """IOI runs as the causal pipeline writes them: ablation, patching (noising) and attribution
    ``delta_logit_diff`` (negative for heads that support the answer) and DLA ``dla_logit_diff``
    (positive for them)."""
    del seed
    imp = ioi_importance(IOI_ORDER)
    ids = []
    for kind, method, metric, values in (
        ("ablation", "ablation_mean", "delta_logit_diff", -imp),
        ("patching", "patching_noising", "delta_logit_diff", -1.05 * imp),
        ("attribution", "attribution", "delta_logit_diff", -0.9 * imp),
        ("dla", "dla", "dla_logit_diff", 0.8 * ioi_importance(DLA_TOP)),
    ):
        rows = _rows(method, metric, values, n=16)
        if kind == "patching":
            rows += _rows(method, "frac_logit_diff", imp / 3.0, n=16)
        ids.append(db.write_run(RunRecord(kind=kind, model=model, model_info=_geometry(), task="ioi",
                                          params={"mode": "mean"}, duration_s=1.0), scores=rows))
    return ids
IOI_TOKENS = ["<s>", "When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave", " a",
              " drink", " to"]
IOI_PROMOTES = [" Mary", " Maria", " she", " her", " Mar"]


def write_attention(db: Atlas, model: str) -> int:
    """The `mine` stage's ``attention`` run: IOI-prompt patterns of the IOI heads (the final token
    " to" attends to " Mary", position 2) and L3H4's promoted tokens."""
    n = len(IOI_TOKENS)
    mat = [[1.0] + [0.0] * q for q in range(n)]
    mat[-1] = [0.1, 0.0, 0.8] + [0.1 / (n - 3)] * (n - 3)
    patterns = {f"L{layer}H{head}": [mat] for layer, head in IOI_ORDER}
    artifact = {"examples": [{"name": "names", "text": "When Mary and John went to the store, John gave a drink to",
                              "tokens": IOI_TOKENS}],
                "patterns": patterns, "promotes": {"L3H4": [IOI_PROMOTES]}}
    run = RunRecord(kind="attention", model=model, model_info=_geometry(), params={"top_k": 20})
    return db.write_run(run, artifacts={"attn_examples": artifact})


def write_chg(db: Atlas, model: str, seed: int = 2) -> int:
    rng = np.random.default_rng(seed)
    k = 3
    G = rng.uniform(0.2, 1.0, size=(k, N_LAYERS, N_HEADS)).astype(np.float32)
    G[:, 2, 1] = 1.0
    G_minus = rng.uniform(0.0, 0.6, size=(k, N_LAYERS, N_HEADS)).astype(np.float32)
    G_minus[:, 2, 1] = 0.95
    G_plus = np.clip(G + 0.1, 0, 1)
    F, N, I_ = G_minus, 1 - G_plus, G_plus - G_minus
    scores = []
    for name, m in (("G", G), ("G_plus", G_plus), ("G_minus", G_minus), ("F", F), ("N", N), ("I", I_)):
        scores += _rows("chg", name, m.mean(0), n=k)
    labels = [LabelRow(layer=2, head=1, head_type="facilitating", method="chg", value=float(F[:, 2, 1].mean()),
                       threshold=0.5, note="always: 3/3 seeds")]
    steps = 40
    loss = np.stack([np.linspace(3, 1, steps) + rng.normal(0, 0.05, steps) for _ in range(k)], axis=1).astype(np.float32)
    artifacts = {"G": G, "F": F, "curve/G/loss": loss, "curve/G+/loss": loss * 0.9,
                 "targeted_ablation": {"ks": [1, 4, 16], "F": [0.5, 1.2, 2.0], "N": [0.0, 0.1, 0.3]},
                 "summary": {"status": "complete", "shares": {"facilitating": 0.1}}}
    run = RunRecord(kind="chg", model=model, model_info=_geometry(), task="natural_text", params={"preset": "quick"},
                    seeds=[0, 1, 2], duration_s=12.0)
    return db.write_run(run, scores=scores, labels=labels, artifacts=artifacts,
                        inputs=[InputRow(idx=0, token_ids=[1, 2, 3], role="train", text="The cat sat.",
                                         meta={"target_positions": [1, 2]})])


def build_synthetic_atlas(path: Path, *, second_model: bool = True) -> dict[str, int]:
    """Write the synthetic atlas at ``path``; returns the run ids by name."""
    ids: dict[str, int] = {}
    with Atlas.open(path) as db:
        ids["scan"] = write_scan(db, "synthetic-llama")
        ids["ablation"], ids["patching"], ids["attribution"], ids["dla"] = write_causal(db, "synthetic-llama")
        ids["chg"] = write_chg(db, "synthetic-llama")
        ids["attention"] = write_attention(db, "synthetic-llama")
        if second_model:
            ids["scan_b"] = write_scan(db, "synthetic-gpt2", seed=7)
            ids["scan_small"] = write_scan(db, "other/small model", seed=9, n_layers=3, n_heads=4)
    return ids
