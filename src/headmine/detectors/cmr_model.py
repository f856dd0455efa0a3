"""The context maintenance and retrieval (CMR) model's lag-CRP and the "CMR distance" of an attention
profile, after Ji-An, Zhou, Benna and Mattar 2024, "Linking In-context Learning in Transformers to Human
Episodic Memory" (arXiv 2405.14992, NeurIPS 2024; §3-4, Fig. 4-6 and their repository's fitting code).

CMR (the paper's §3, as simulated in their released code): a list of ``n`` one-hot items is studied in
order; the context-to-item memory is ``M = (I - (1 - beta_enc) T)^-1 T`` (T the shift matrix, plus an
absorbing end state), so item j is retrieved from item i's context with strength ``(1 - beta_enc)^(j-i-1)``
for j > i. Free recall starts from item s0's context ``t``; each step draws an item with probability
proportional to ``M^T t`` (stopping at the absorbing state), then drifts the context towards the recalled
item: ``t_in = (1 - gamma_ft) f + gamma_ft M f`` (normalised), ``t = (1 - beta_rec) t + beta_rec t_in``
(normalised). The conditional response probability (CRP) is the distribution of the lag between
successive recalls (the first measured from s0), restricted to lags -5..+5 and normalised.

The head's profile is its attention by lag on repeated random tokens (``lag_profiles`` in
``detectors/cmr_like.py``). CMR distance (their ``fit_attn_score``): both profiles are shifted to a minimum
of 0, the CRP is rescaled to the head's maximum, and the distance is
``mean((crp_scaled - attn_scaled)^2) / var(attn_scaled)``, minimised over the grid of (beta_enc, beta_rec,
gamma_ft). It is invariant to the scale of the attention (a head that parks most of its attention on the
sink but keeps an induction-like shape elsewhere still fits). The paper calls heads with a distance below
0.5 (and, stricter, 0.1) CMR-like.

Grid here (coarser than the paper's 20 x 21 x 11 with 1000 simulations per start): beta_enc 0.1..1.0 and
beta_rec 0.0..1.0 in steps of 0.1, gamma_ft 0, 0.25, .., 1; 100 items, starts s0 in {0, 5, 10, 15}, 200
simulated recalls per start, seed 0. The table is precomputed by ``simulate_crp_table`` and shipped as
``detectors/data/cmr_crp.tsv`` (regenerate with ``python -m headmine.detectors.cmr_model``, 209 CPU-s).
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from importlib import resources

import numpy as np

from headmine.core.errors import DetectorError

MAX_LAG = 5
"""Lags -MAX_LAG..+MAX_LAG are fitted (the paper's ``select_range``)."""
N_ITEMS = 100
BETA_ENC = tuple(round(0.1 * k, 2) for k in range(1, 11))
BETA_REC = tuple(round(0.1 * k, 2) for k in range(0, 11))
GAMMA_FT = (0.0, 0.25, 0.5, 0.75, 1.0)
STARTS = (0, 5, 10, 15)
N_SIM = 200
MAX_RECALLS = 100
TABLE = "cmr_crp.tsv"


def context_memory(beta_enc: float, n: int = N_ITEMS) -> np.ndarray:
    """[n+1, n+1] context-to-item associations ``(I - (1 - beta_enc) T)^-1 T`` (last row/column: absorbing state)."""
    if not 0 < beta_enc <= 1:
        raise DetectorError(f"beta_enc={beta_enc} must lie in (0, 1]")
    s = n + 1
    t = np.zeros((s, s))
    t[np.arange(s - 1), np.arange(1, s)] = 1.0
    return np.linalg.solve(np.eye(s) - (1 - beta_enc) * t, t)


def simulate_crp(beta_enc: float, params: list[tuple[float, float]], *, n: int = N_ITEMS, starts: tuple[int, ...] = STARTS,
                 n_sim: int = N_SIM, max_recalls: int = MAX_RECALLS, seed: int = 0) -> np.ndarray:
    """[len(params), 2 * MAX_LAG + 1] CRP over lags -MAX_LAG..MAX_LAG for each (beta_rec, gamma_ft) at one
    beta_enc, by simulating ``n_sim`` free recalls from each start (all simulations run as one batch).

    Per simulation, the lag counts are divided by its number of recalls (the paper's estimator), averaged
    over simulations and starts, then normalised over the fitted lags."""
    m = context_memory(beta_enc, n)
    s = n + 1
    rng = np.random.default_rng(seed)
    rows = [(br, g, s0) for br, g in params for s0 in starts for _ in range(n_sim)]
    e = len(rows)
    beta_rec = np.array([r[0] for r in rows])[:, None]
    gamma = np.array([r[1] for r in rows])[:, None]
    s0 = np.array([r[2] for r in rows])
    ctx = np.zeros((e, s))
    ctx[np.arange(e), s0] = 1.0
    prev = s0.copy()
    alive = np.ones(e, dtype=bool)
    counts = np.zeros((e, 2 * MAX_LAG + 1))
    total = np.zeros(e)
    mt = m.T
    for _ in range(max_recalls):
        strength = ctx @ m
        p = strength / strength.sum(1, keepdims=True)
        item = (np.cumsum(p, 1) < rng.random(e)[:, None]).sum(1).clip(max=s - 1)
        alive &= item < s - 1
        if not alive.any():
            break
        lag = item - prev
        hit = alive & (np.abs(lag) <= MAX_LAG)
        total += alive
        np.add.at(counts, (np.nonzero(hit)[0], lag[hit] + MAX_LAG), 1.0)
        prev = np.where(alive, item, prev)
        f = np.zeros((e, s))
        f[np.arange(e), item] = 1.0
        t_in = (1 - gamma) * f + gamma * (f @ mt)
        t_in /= np.linalg.norm(t_in, axis=1, keepdims=True)
        new = (1 - beta_rec) * ctx + beta_rec * t_in
        new /= np.linalg.norm(new, axis=1, keepdims=True)
        ctx = np.where(alive[:, None], new, ctx)
    per_sim = counts / np.maximum(total, 1)[:, None]
    out = per_sim.reshape(len(params), len(starts) * n_sim, -1).mean(1)
    return out / out.sum(1, keepdims=True).clip(min=1e-30)


def simulate_crp_table(**kwargs: object) -> tuple[np.ndarray, np.ndarray]:
    """(params [G, 3] = beta_enc, beta_rec, gamma_ft; crps [G, 2 * MAX_LAG + 1]) over the whole grid."""
    params, crps = [], []
    pairs = list(itertools.product(BETA_REC, GAMMA_FT))
    for be in BETA_ENC:
        crps.append(simulate_crp(be, pairs, **kwargs))  # type: ignore[arg-type]
        params += [(be, br, g) for br, g in pairs]
    return np.array(params), np.concatenate(crps)


@lru_cache(maxsize=1)
def crp_table() -> tuple[np.ndarray, np.ndarray]:
    """The shipped grid: (params [G, 3], crps [G, 2 * MAX_LAG + 1])."""
    text = resources.files("headmine.detectors").joinpath("data", TABLE).read_text(encoding="utf-8")
    rows = [[float(x) for x in line.split("\t")] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    arr = np.array(rows)
    if arr.ndim != 2 or arr.shape[1] != 3 + 2 * MAX_LAG + 1:
        raise DetectorError(f"{TABLE} must have 3 parameters and {2 * MAX_LAG + 1} CRP values per row",
                            "regenerate it with `python -m headmine.detectors.cmr_model`")
    return arr[:, :3], arr[:, 3:]


def cmr_distance(profiles: np.ndarray, crps: np.ndarray | None = None, *, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """CMR distance of attention-by-lag profiles [..., 2 * MAX_LAG + 1] and the index of the best-fitting grid
    row, each of shape [...]. NaN (index -1) for a flat or non-finite profile (no shape to fit)."""
    if crps is None:
        crps = crp_table()[1]
    a = np.asarray(profiles, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != crps.shape[1]:
        raise DetectorError(f"profiles of shape {a.shape} do not end in the {crps.shape[1]} CRP lags")
    lead = a.shape[:-1]
    a = a.reshape(-1, a.shape[-1])
    dist = np.full(a.shape[0], np.nan)
    best = np.full(a.shape[0], -1, dtype=np.int64)
    c = crps - crps.min(1, keepdims=True)
    top = c.max(1, keepdims=True)
    c = np.where(top > 0, c / np.where(top > 0, top, 1.0), 0.0)  # each CRP shifted to min 0 and max 1
    shifted = a - a.min(1, keepdims=True)
    peak = shifted.max(1)
    var = shifted.var(1)
    ok = np.isfinite(a).all(1) & (peak > 0) & (var > 1e-20)
    rows = np.nonzero(ok)[0]
    for lo in range(0, len(rows), chunk):
        r = rows[lo:lo + chunk]
        x = shifted[r]  # [n, L]
        scaled = c[None, :, :] * peak[r, None, None]  # the CRP rescaled to the head's maximum
        mse = ((scaled - x[:, None, :]) ** 2).mean(-1) / var[r, None]  # [n, G]
        best[r] = mse.argmin(1)
        dist[r] = mse[np.arange(len(r)), best[r]]
    return dist.reshape(lead), best.reshape(lead)


def write_table(path: str) -> None:
    """Simulate the grid and write the TSV shipped in the package."""
    params, crps = simulate_crp_table()
    lags = " ".join(str(lag) for lag in range(-MAX_LAG, MAX_LAG + 1))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# CMR lag-CRP (headmine.detectors.cmr_model.simulate_crp_table: {N_ITEMS} items, starts {STARTS}, "
                 f"{N_SIM} recalls each, seed 0)\n# beta_enc beta_rec gamma_ft then CRP at lags {lags}\n")
        for p, c in zip(params, crps, strict=True):
            fh.write("\t".join([f"{x:g}" for x in p] + [f"{x:.6f}" for x in c]) + "\n")


if __name__ == "__main__":  # pragma: no cover - regenerates the shipped table
    import sys

    write_table(sys.argv[1] if len(sys.argv) > 1 else str(resources.files("headmine.detectors").joinpath("data", TABLE)))
