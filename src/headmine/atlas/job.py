"""The one atlas writer: every pipeline job returns a :class:`JobResult`, and :func:`write_job` stores it.

```python
class MyResult(JobResult):
    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        record = RunRecord(kind="my_kind", model=self.model, model_info=self.model_info, group_id=group_id)
        return AtlasRun(record=record, scores=score_rows(self.frame, skip_nan_values=True))

run_id = write_job(MyResult(...), "atlas.db", group_id="session-1")
```

Why one writer: the jobs used to open the atlas themselves and disagreed on error handling and NaN
handling. Here a job only says *what* its run is (an :class:`AtlasRun`); opening, the single
transaction and the error message are the same for all. No torch here (the atlas layer is torch-free):
jobs turn their tensors into numpy arrays and plain data before building the run.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from headmine.atlas.schema import InputRow, LabelRow, RunRecord, ScoreRow
from headmine.atlas.store import Atlas
from headmine.core.errors import AtlasError
from headmine.core.tables import SCORE_COLUMNS


@dataclass(frozen=True, kw_only=True)
class AtlasRun:
    """Everything one atlas run holds, ready to be written in one transaction.

    ``scores`` is either a tidy score table (the :mod:`headmine.core.tables` columns; NaN values are
    kept and stored as NULL) or any iterable of :class:`ScoreRow` (e.g. :func:`score_rows` with
    ``skip_nan_values=True`` for jobs that leave missing values out). A generator is consumed once.
    ``artifacts`` maps a name to a numpy array (stored as ``.npy``) or JSON-serialisable data.
    """

    record: RunRecord
    scores: pd.DataFrame | Iterable[ScoreRow] = ()
    labels: Sequence[LabelRow] = ()
    inputs: Sequence[InputRow] = ()
    artifacts: Mapping[str, Any] = field(default_factory=dict)

    def score_rows(self) -> Iterable[ScoreRow]:
        """The scores as ScoreRows (a table is converted with NaN values kept)."""
        if isinstance(self.scores, pd.DataFrame):
            return score_rows(self.scores, skip_nan_values=False)
        return self.scores


class JobResult(ABC):
    """What every pipeline job returns: something that knows which atlas run it is."""

    @abstractmethod
    def to_atlas(self, *, group_id: str | None = None) -> AtlasRun:
        """This result as one atlas run, tagged with ``group_id`` (a session such as `mine`'s)."""


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def score_rows(frame: pd.DataFrame, *, skip_nan_values: bool) -> Iterator[ScoreRow]:
    """ScoreRows from a tidy score table: a NaN stderr becomes None, and a NaN value is either
    kept (stored as NULL, read back as NaN) or, with ``skip_nan_values``, the row is left out."""
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"a score table needs the columns {SCORE_COLUMNS}; missing {missing}")
    for r in frame[SCORE_COLUMNS].itertuples(index=False):
        if skip_nan_values and _missing(r.value):
            continue
        yield ScoreRow(component=r.component, layer=int(r.layer), head=int(r.head), method=r.method,
                       metric=r.metric, value=float(r.value), n=None if _missing(r.n) else int(r.n),
                       stderr=None if _missing(r.stderr) else float(r.stderr))


def write_job(result: JobResult | AtlasRun, atlas_path: str | os.PathLike[str], *, group_id: str | None = None) -> int:
    """Write one job's result as ONE atlas run (one transaction: all of it or nothing) and return its id.

    ``group_id`` tags the run (for a ready :class:`AtlasRun`, it replaces the record's group id when
    given). Every failure is an :class:`AtlasError` naming the run kind and the atlas path.
    """
    kind = type(result).__name__
    try:
        if isinstance(result, AtlasRun):
            run = result if group_id is None else replace(result, record=replace(result.record, group_id=group_id))
        else:
            run = result.to_atlas(group_id=group_id)
        kind = run.record.kind
        with Atlas.open(atlas_path) as db:
            return db.write_run(run.record, scores=run.score_rows(), labels=run.labels, inputs=run.inputs,
                                artifacts=run.artifacts)
    except AtlasError:
        raise
    except Exception as err:  # write_run is one transaction: nothing was written
        hint = ("the job built an invalid row or artifact: this is a bug in the job, please report it"
                if isinstance(err, (TypeError, ValueError)) else "check the atlas path and disk space")
        raise AtlasError(f"could not write the {kind} run to {atlas_path}: {err}", hint) from err
