"""The results database (SQLite) and the paper catalog. No torch here.

from headmine.atlas import Atlas, RunRecord, ScoreRow
with Atlas.open("atlas.db") as db:
    run_id = db.write_run(RunRecord(kind="scan", model="gpt2"), scores=[...])
    db.heads(head_type="Induction Head")
"""

from headmine.atlas.export import export_run, read_inputs_export
from headmine.atlas.job import AtlasRun, JobResult, score_rows, write_job
from headmine.atlas.schema import SCHEMA_VERSION, InputRow, LabelRow, RunRecord, ScoreRow
from headmine.atlas.store import Atlas, utc_now
from headmine.catalog import (
    STAGES,
    DetectorLink,
    HeadType,
    Paper,
    canonical_head_type,
    head_type_info,
    head_types_for_detector,
    load_head_types,
    load_papers,
)

__all__ = [
    "SCHEMA_VERSION",
    "STAGES",
    "Atlas",
    "AtlasRun",
    "DetectorLink",
    "HeadType",
    "InputRow",
    "JobResult",
    "LabelRow",
    "Paper",
    "RunRecord",
    "ScoreRow",
    "canonical_head_type",
    "export_run",
    "head_type_info",
    "head_types_for_detector",
    "load_head_types",
    "load_papers",
    "read_inputs_export",
    "score_rows",
    "utc_now",
    "write_job",
]
