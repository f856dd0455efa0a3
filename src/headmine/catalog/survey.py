"""The paper catalog: canonical head types, the papers that describe them, and the detectors
that look for them.

Data lives in ``data/`` (``papers.tsv`` from the survey catalog, ``paper_summaries.json``
and ``head_types.json`` written for headmine). The accessors here are pure Python and need no
database, so detectors can tag themselves with a survey head type and stage at import time::

    from headmine.catalog import head_type_info
    info = head_type_info("induction head")   # aliases and case are resolved
    info.stage  # 'Latent Reasoning'

:func:`headmine.atlas.catalog_tables.fill_catalog` copies the same data into an atlas.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

from headmine.core.errors import InputError

STAGES: tuple[str, ...] = (
    "Knowledge Recalling",
    "In-Context Identification",
    "Latent Reasoning",
    "Expression Preparation",
)
"""The survey's four stages, in its order."""

STAGE_ABBREVIATIONS: dict[str, str] = {
    "KR": "Knowledge Recalling",
    "ICI": "In-Context Identification",
    "LR": "Latent Reasoning",
    "EP": "Expression Preparation",
}

_DATA_FILES = ("papers.tsv", "paper_summaries.json", "head_types.json")


NOT_TESTABLE = "not_testable"
"""Link kind of a type with no detector on purpose: its note says what testing it needs (scale, a data set, a
behaviour the models here lack, training) so the gap is explained rather than linked loosely."""


@dataclass(frozen=True, kw_only=True)
class DetectorLink:
    """A detector (or causal method) that finds a head type, and the task it runs on."""

    detector: str
    task: str
    kind: str
    """"attention" (pattern/weight score), "causal" (a generic intervention that tests candidates),
    "defining_test" (the causal test that defines the type in its paper, e.g. the IOI roles' path patching
    or the dormancy test), "application" (headmine.apply) or "not_testable" (:data:`NOT_TESTABLE`: no
    detector; the note says why the type cannot be tested on the models headmine runs here)."""
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class HeadType:
    """A canonical head type from the survey's vocabulary."""

    name: str
    stage: str
    stage_source: str  # "survey", "survey-report suggestion" or "headmine guess"
    subcategory: str | None
    family: str
    aliases: tuple[str, ...]
    function: str
    detectors: tuple[DetectorLink, ...]


@dataclass(frozen=True, kw_only=True)
class Paper:
    """One catalog row. ``head_types`` are canonical names; ``head_types_raw`` the column as given."""

    key: str  # arXiv id when there is one, else the title
    date: str
    title: str
    arxiv_id: str | None
    venue: str
    head_types: tuple[str, ...]
    head_types_raw: tuple[str, ...]
    models: str
    tasks: str
    key_result: str
    summary: str
    title_source: str


def _read_text(name: str) -> str:
    return resources.files("headmine.catalog").joinpath("data", name).read_text(encoding="utf-8")


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[-_]", " ", name.strip().lower()))


@lru_cache(maxsize=1)
def _head_types() -> tuple[HeadType, ...]:
    doc = json.loads(_read_text("head_types.json"))
    out = []
    for item in doc["head_types"]:
        if item["stage"] not in STAGES:
            raise ValueError(f"head_types.json: {item['name']} has unknown stage {item['stage']!r}")
        out.append(
            HeadType(
                name=item["name"],
                stage=item["stage"],
                stage_source=item["stage_source"],
                subcategory=item.get("survey_subcategory"),
                family=item["family"],
                aliases=tuple(item.get("aliases", ())),
                function=item["function"],
                detectors=tuple(DetectorLink(**d) for d in item.get("detectors", ())),
            )
        )
    return tuple(out)


@lru_cache(maxsize=1)
def _alias_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for ht in _head_types():
        for alias in (ht.name, *ht.aliases):
            index.setdefault(_norm(alias), ht.name)
    return index


_REGISTERED_LINKS: dict[str, list[DetectorLink]] = {}
"""Links declared in code: each detector registers the head types it finds (``register_link``)."""


def register_link(head_type: str, link: DetectorLink) -> bool:
    """Record that ``link`` finds ``head_type`` (called when a detector registers itself).

    Returns False, and records nothing, when ``head_type`` is not a survey head type: a plugin may
    look for a type the survey does not name; its labels keep the name, the catalog has no entry.
    """
    name = canonical_head_type(head_type)
    if name is None:
        return False
    links = _REGISTERED_LINKS.setdefault(name, [])
    if link not in links:
        links.append(link)
    return True


def unregister_links(detector: str) -> None:
    """Forget the registered links of ``detector`` (a throwaway detector removed again, e.g. in tests)."""
    for name, links in _REGISTERED_LINKS.items():
        _REGISTERED_LINKS[name] = [link for link in links if link.detector != detector]


def all_head_types() -> tuple[HeadType, ...]:
    """The packaged head types, each with its packaged links plus the links registered in code."""
    out = []
    for ht in _head_types():
        extra = tuple(link for link in _REGISTERED_LINKS.get(ht.name, ()) if link not in ht.detectors)
        out.append(replace(ht, detectors=ht.detectors + extra) if extra else ht)
    return tuple(out)


def load_head_types() -> dict[str, HeadType]:
    """All canonical head types by name, in the survey's stage order (registered links included)."""
    return {ht.name: ht for ht in all_head_types()}


def canonical_head_type(name: str) -> str | None:
    """The canonical name for ``name`` (any alias, any case, hyphens or spaces), or None.

    A bare family word such as ``"induction"`` also resolves (``"Induction Head"``).
    """
    index = _alias_index()
    key = _norm(name)
    return index.get(key) or index.get(f"{key} head")


def resolve_head_type(name: str) -> str:
    """Like :func:`canonical_head_type` but raises :class:`InputError` with suggestions."""
    found = canonical_head_type(name)
    if found is None:
        names = [ht.name for ht in _head_types()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else "list them with `headmine catalog` or load_head_types()"
        )
        raise InputError(f"unknown head type {name!r}", hint)
    return found


def head_type_info(name: str) -> HeadType:
    """The :class:`HeadType` for a canonical name or alias."""
    return load_head_types()[resolve_head_type(name)]


def normalize_stage(stage: str) -> str:
    """Full stage name from a full name or abbreviation (KR, ICI, LR, EP), any case."""
    key = _norm(stage)
    for full in STAGES:
        if _norm(full) == key:
            return full
    for abbr, full in STAGE_ABBREVIATIONS.items():
        if abbr.lower() == key:
            return full
    raise InputError(
        f"unknown stage {stage!r}",
        f"use one of: {', '.join(STAGES)} (or {', '.join(STAGE_ABBREVIATIONS)})",
    )


def head_types_for_detector(detector: str) -> list[str]:
    """Canonical head types that ``detector`` (a detector or causal-method registry name) finds."""
    return [ht.name for ht in all_head_types() if any(d.detector == detector for d in ht.detectors)]


def detectors_for_head_type(name: str) -> list[DetectorLink]:
    """The detectors linked to a head type (empty: no detector yet)."""
    return list(head_type_info(name).detectors)


@lru_cache(maxsize=1)
def _papers() -> tuple[tuple[Paper, ...], tuple[str, ...]]:
    summaries: dict[str, str] = json.loads(_read_text("paper_summaries.json"))
    rows = list(csv.DictReader(_read_text("papers.tsv").splitlines(), delimiter="\t"))
    papers, unmatched = [], []
    for row in rows:
        match = re.search(r"arXiv:(\d{4}\.\d{4,5})", row["arxiv_id_or_venue"])
        arxiv_id = match.group(1) if match else None
        key = arxiv_id or row["title_en"]
        raw = tuple(h.strip() for h in row["head_types"].split(";") if h.strip())
        canonical: list[str] = []
        for name in raw:
            found = canonical_head_type(name)
            if found is None:
                unmatched.append(name)
            elif found not in canonical:
                canonical.append(found)
        papers.append(
            Paper(
                key=key,
                date=row["date"],
                title=row["title_en"],
                arxiv_id=arxiv_id,
                venue=row["arxiv_id_or_venue"],
                head_types=tuple(canonical),
                head_types_raw=raw,
                models=row["models"],
                tasks=row["tasks"],
                key_result=row["key_result"],
                summary=summaries.get(key, ""),
                title_source=row["title_source"],
            )
        )
    return tuple(papers), tuple(sorted(set(unmatched)))


def load_papers() -> list[Paper]:
    """All catalog papers, newest first (the catalog's order)."""
    return list(_papers()[0])


def unmatched_head_types() -> list[str]:
    """Head-type names in papers.tsv that match no canonical name or alias."""
    return list(_papers()[1])


@lru_cache(maxsize=1)
def catalog_fingerprint() -> str:
    """sha256 over the catalog data files; an atlas refills its catalog when this changes."""
    digest = hashlib.sha256()
    for name in _DATA_FILES:
        digest.update(name.encode())
        digest.update(_read_text(name).encode("utf-8"))
    return digest.hexdigest()
