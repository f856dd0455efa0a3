"""The survey catalog: canonical head types, stages, the papers that describe them, and the links
from head types to the detectors and methods that find them. Pure Python (no torch, no database),
so detectors tag themselves with a survey type at import time and register their links here."""

from headmine.catalog.survey import (
    STAGE_ABBREVIATIONS,
    STAGES,
    DetectorLink,
    HeadType,
    Paper,
    all_head_types,
    canonical_head_type,
    catalog_fingerprint,
    detectors_for_head_type,
    head_type_info,
    head_types_for_detector,
    load_head_types,
    load_papers,
    normalize_stage,
    register_link,
    resolve_head_type,
    unmatched_head_types,
)

__all__ = [
    "STAGES",
    "STAGE_ABBREVIATIONS",
    "DetectorLink",
    "HeadType",
    "Paper",
    "all_head_types",
    "canonical_head_type",
    "catalog_fingerprint",
    "detectors_for_head_type",
    "head_type_info",
    "head_types_for_detector",
    "load_head_types",
    "load_papers",
    "normalize_stage",
    "register_link",
    "resolve_head_type",
    "unmatched_head_types",
]
