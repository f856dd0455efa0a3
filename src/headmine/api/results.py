"""What the notebook API returns: :class:`Result`, a pipeline job with a tidy table, top heads and a figure.

Every job of the pipeline (a scan, a causal method, a CHG fit, the factual analysis) returns a
:class:`~headmine.atlas.job.JobResult` that knows which atlas run it is. :class:`Result` reads that
run, so a notebook sees exactly the numbers the atlas would store: one score per (component, layer,
head, method, metric), with its sample count and standard error. Ranks and signs follow the report
(:mod:`headmine.report.meaning`): rank 1 is the most important head, effects on a task rank by
``|value|`` and scores by their stated direction, ties share a rank.
"""

from __future__ import annotations

import html
from dataclasses import asdict
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from headmine.api.figures import heatmap as draw_heatmap
from headmine.atlas import AtlasRun, JobResult, RunRecord, write_job
from headmine.core.errors import InputError
from headmine.report.meaning import Meaning, meaning_for
from headmine.report.series import metric_order, ranks

#: the columns of :meth:`Result.to_pandas`, in order.
TIDY_COLUMNS = ("layer", "head", "method", "metric", "value", "n", "stderr", "rank")


def primary_metric(metrics: list[str]) -> str:
    """The metric that stands for a method: the report's rule (:func:`~headmine.report.series.metric_order`)."""
    return min(metrics, key=metric_order)


class Result:
    """A finished job: ``.job`` is the pipeline's own result (tensors, configs, checks), the rest views it.

    - :meth:`to_pandas`: the tidy score table (layer, head, method, metric, value, n, stderr, rank),
      best-ranked heads first;
    - :meth:`top`: the ``k`` most important heads of one method's metric, with what the value means;
    - :meth:`matrix` / :meth:`heatmap`: the [layer, head] values and a plotly figure of them;
    - :meth:`labels`: the head labels the job would store (scan and CHG);
    - :meth:`save`: write the run into an atlas file, returning its run id.
    """

    def __init__(self, job: JobResult, *, definitions: dict[str, str] | None = None) -> None:
        self.job = job
        self.run_id: int | None = None  # set when saved into an atlas
        self._definitions = definitions or {}

    # ------------------------------------------------------------------ the run the job is
    @cached_property
    def run(self) -> AtlasRun:
        """The atlas run this result is (built once)."""
        return self.job.to_atlas()

    @property
    def record(self) -> RunRecord:
        return self.run.record

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def model(self) -> str:
        return self.record.model

    @property
    def task(self) -> str | None:
        return self.record.task

    @cached_property
    def _scores(self) -> pd.DataFrame:
        rows = [asdict(r) for r in self.run.score_rows()]
        df = pd.DataFrame(rows, columns=["component", "layer", "head", "method", "metric", "value", "n", "stderr"])
        for col in ("value", "stderr"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
        return df

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads) of the model."""
        geo = (self.record.model_info or {}).get("geometry") or {}
        heads = self._scores[self._scores["component"] == "head"]
        n_layers = int(geo.get("n_layers") or (heads["layer"].max() + 1 if len(heads) else 0))
        n_heads = int(geo.get("n_heads") or (heads["head"].max() + 1 if len(heads) else 0))
        return n_layers, n_heads

    def series(self) -> pd.DataFrame:
        """The (method, metric) pairs with head scores, and how many heads each covers."""
        heads = self._scores[self._scores["component"] == "head"]
        return heads.groupby(["method", "metric"], sort=True).size().rename("heads").reset_index()

    # ------------------------------------------------------------------ choosing a series
    def _pick(self, method: str | None, metric: str | None) -> tuple[str, str]:
        s = self.series()
        if s.empty:
            raise InputError(f"this {self.kind} result has no per-head scores", "use .job for its other outputs")
        if method is None:
            methods = list(dict.fromkeys(s["method"]))
            if len(methods) > 1:
                raise InputError(f"this result holds several methods: {', '.join(methods)}",
                                 f"choose one, e.g. method={methods[0]!r}")
            method = methods[0]
        metrics = list(s.loc[s["method"] == method, "metric"])
        if not metrics:
            raise InputError(f"no scores for method {method!r}", f"choose from {', '.join(dict.fromkeys(s['method']))}")
        if metric is None:
            metric = primary_metric(metrics)
        elif metric not in metrics:
            raise InputError(f"method {method!r} has no metric {metric!r}", f"choose from {', '.join(metrics)}")
        return method, metric

    def meaning(self, method: str | None = None, metric: str | None = None) -> Meaning:
        """What a value of the series means and which way is important (as in the report)."""
        method, metric = self._pick(method, metric)
        return meaning_for(self.kind, self.task, method, metric, definition=self._definitions.get(method))

    def matrix(self, method: str | None = None, metric: str | None = None) -> np.ndarray:
        """[layers, heads] values of one series (NaN where a head was not measured)."""
        method, metric = self._pick(method, metric)
        return self._matrix(method, metric)

    def _matrix(self, method: str, metric: str) -> np.ndarray:
        df = self._scores
        part = df[(df["component"] == "head") & (df["method"] == method) & (df["metric"] == metric)]
        out = np.full(self.shape, np.nan)
        out[part["layer"].to_numpy(int), part["head"].to_numpy(int)] = part["value"].to_numpy(float)
        return out

    # ------------------------------------------------------------------ tables
    def to_pandas(self) -> pd.DataFrame:
        """A copy of :attr:`tidy`."""
        return self.tidy.copy()

    @cached_property
    def tidy(self) -> pd.DataFrame:
        """The tidy score table, one row per head and metric; ``rank`` is the head's rank within its
        (method, metric) by the report's convention (1 = most important, ties share). Rows are sorted by
        rank, then method and metric, so ``.head()`` shows each series' best heads. Components that are
        not heads (MLPs, layers) come last with ``head`` = -1 and no rank, and then a ``component`` column
        says what they are."""
        df = self._scores.copy()
        df["rank"] = pd.array([pd.NA] * len(df), dtype="Int64")
        for (method, metric), idx in df[df["component"] == "head"].groupby(["method", "metric"]).groups.items():
            meaning = meaning_for(self.kind, self.task, str(method), str(metric),
                                  definition=self._definitions.get(str(method)))
            rank, _pct, _n = ranks(self._matrix(str(method), str(metric)), meaning.sign, meaning.by_abs)
            sub = df.loc[idx]
            r = rank[sub["layer"].to_numpy(int), sub["head"].to_numpy(int)]
            df.loc[idx, "rank"] = pd.array([int(x) if x > 0 else pd.NA for x in r], dtype="Int64")
        df["_other"] = df["component"] != "head"
        primary = {m: primary_metric(list(g)) for m, g in df.groupby("method")["metric"].unique().items()}
        df["_secondary"] = [metric != primary[method] for method, metric in zip(df["method"], df["metric"], strict=True)]
        df = df.sort_values(["_other", "rank", "_secondary", "method", "metric", "layer", "head"], na_position="last",
                            kind="stable")
        cols = list(TIDY_COLUMNS) + (["component"] if (df["component"] != "head").any() else [])
        return df[cols].reset_index(drop=True)

    def top(self, k: int = 10, method: str | None = None, metric: str | None = None) -> pd.DataFrame:
        """The ``k`` most important heads of one series (the only method, or ``method=``), best first:
        head, value, stderr, rank and what the value says in words."""
        method, metric = self._pick(method, metric)
        tidy = self.tidy
        part = tidy[(tidy["method"] == method) & (tidy["metric"] == metric) & tidy["rank"].notna()].head(k).copy()
        mean = self.meaning(method, metric)
        part.insert(0, "head_id", [f"L{int(r.layer)}H{int(r.head)}" for r in part.itertuples()])
        part["says"] = [mean.describe(float(v)) for v in part["value"]]
        return part[["head_id", *TIDY_COLUMNS, "says"]].reset_index(drop=True)

    def labels(self) -> pd.DataFrame:
        """The head labels this job stores (head type, stage, score, threshold, method, note); empty for
        jobs that label nothing."""
        rows = [asdict(r) for r in self.run.labels]
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ figures and storage
    def heatmap(self, method: str | None = None, metric: str | None = None) -> Any:
        """A plotly figure of one series as the report draws it (see :func:`headmine.api.figures.heatmap`)."""
        method, metric = self._pick(method, metric)
        return draw_heatmap(self._matrix(method, metric), self.meaning(method, metric),
                       title=f"{self.model} · {self.kind} · {method} · {metric}")

    def save(self, atlas: str, *, group_id: str | None = None) -> int:
        """Write this run into the atlas file ``atlas`` (created if missing); returns the run id."""
        return write_job(self.job, atlas, group_id=group_id)

    def __repr__(self) -> str:
        s = self.series()
        return (f"<headmine Result {self.kind} on {self.model}"
                f"{f' ({self.task})' if self.task else ''}: {len(s)} series, {len(self._scores)} scores>")

    def _repr_html_(self) -> str:
        """A notebook summary: what ran, and the top 5 heads of each series (at most 6 series)."""
        parts = [f"<div class='headmine-result'><b>{html.escape(self.kind)}</b> on <code>{html.escape(self.model)}</code>"
                 + (f", task <code>{html.escape(str(self.task))}</code>" if self.task else "")
                 + f" &middot; {len(self._scores)} scores</div>"]
        s = self.series()
        shown = s.drop_duplicates("method").head(6)
        for r in shown.itertuples():
            metric = primary_metric(list(s.loc[s["method"] == r.method, "metric"]))
            top = self.top(5, method=str(r.method), metric=metric)
            cells = "".join(f"<tr><td>{html.escape(t.head_id)}</td><td>{t.value:.4g}</td><td>{html.escape(t.says)}</td></tr>"
                            for t in top.itertuples())
            parts.append(f"<details open><summary>{html.escape(str(r.method))} · {html.escape(metric)}</summary>"
                         f"<table><tr><th>head</th><th>value</th><th>meaning</th></tr>{cells}</table></details>")
        if len(s.drop_duplicates("method")) > len(shown):
            parts.append("<p>more series: see .series() and .to_pandas()</p>")
        return "".join(parts)
