"""The paper catalog: packaged data, alias matching, detector links, and the DB tables."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from importlib import resources
from pathlib import Path

import pytest

from headmine import catalog as cat
from headmine.atlas import Atlas, load_head_types, load_papers
from headmine.causal import ioi_roles  # noqa: F401  (registers its links on import: the test must not depend on order)
from headmine.core.errors import InputError
from headmine.detectors import DETECTORS as DETECTOR_REGISTRY

# Canonical names from the survey framework (section 5 of /work/shared/survey/survey_framework.md).
SURVEY_HEAD_TYPES = {
    # survey stages
    "Associative Memory Head", "Memory Head", "Constant Head", "Single Letter Head", "Negative Head",
    "Previous Token Head", "Positional Head", "Rare Words Head", "Duplicate Token Head", "Retrieval Head",
    "Global Retrieval Head", "Syntactic Head", "Subword Merge Head", "Mover Head", "Name Mover Head",
    "Backup Name Mover Head", "Negative Name Mover Head", "Letter Mover Head", "Context Head",
    "Content Gatherer Head", "Sentiment Summarizer", "Semantic Induction Head", "Subject Head", "Relation Head",
    "Summary Reader", "Function Vector Head", "Induction Head", "In-Context Head", "Truthfulness Head",
    "Accuracy Head", "Consistency Head", "Vulnerable Head", "Correct Letter Head", "Iteration Head",
    "Successor Head", "Inhibition Head", "S-Inhibition Head", "Mixed Head", "Amplification Head",
    "Correct Head", "Coherence Head", "Faithfulness Head",
    # catalog-only types the survey does not place
    "Copy Suppression Head", "Streaming Head", "Local Head", "Delimiter Head", "Block Head", "Diagonal Head",
    "Apostrophe Head", "Interrogation Head", "Syntactic Dependency Head", "Constituency Grammar Inducing Head",
    "Copy Head", "Past Tense Head", "Forerunner Token Head", "CMR-like Head", "Statistical Induction Head",
    "Generalized Induction Head", "N-gram Head", "Arithmetic Head", "CoT Head", "Detection Head",
    "Queried-Rule Locating Head", "Queried-Rule Mover Head", "Fact-Processing Head", "Decision Head",
    "Direct-Effect Head", "Safety Head", "Knowledge Retention Head", "Important Head", "Active-Dormant Head",
}  # fmt: skip

# causal methods linked in the packaged catalog data (detectors register their own links in code)
CAUSAL_LINKS = {"dormant", "chg", "argument_passing", "activation_patching", "ablation", "ioi_roles"}

SURVEY_STAGE = {
    "Induction Head": "Latent Reasoning",
    "Previous Token Head": "In-Context Identification",
    "Memory Head": "Knowledge Recalling",
    "Coherence Head": "Expression Preparation",
    "Successor Head": "Latent Reasoning",
    "Name Mover Head": "In-Context Identification",
}


def _data(name: str) -> str:
    return resources.files("headmine.catalog").joinpath("data", name).read_text(encoding="utf-8")


def test_papers_tsv_is_the_survey_catalog() -> None:
    rows = list(csv.DictReader(_data("papers.tsv").splitlines(), delimiter="\t"))
    assert len(rows) == 66
    survey = Path("/work/shared/survey/catalog.tsv")
    if survey.exists():
        assert _data("papers.tsv") == survey.read_text(encoding="utf-8")


def test_every_paper_has_its_own_summary() -> None:
    papers = load_papers()
    assert len(papers) == 66
    assert len({p.key for p in papers}) == 66
    summaries = json.loads(_data("paper_summaries.json"))
    assert set(summaries) == {p.key for p in papers}
    for p in papers:
        assert p.summary and p.summary == summaries[p.key]
        assert p.summary != p.key_result  # written for headmine, not copied
        assert p.head_types, p.title


def test_every_canonical_head_type_present() -> None:
    types = load_head_types()
    assert set(types) == SURVEY_HEAD_TYPES
    for ht in types.values():
        assert ht.stage in cat.STAGES
        assert ht.function and ht.family
        assert ht.stage_source in {"survey", "survey-report suggestion", "headmine guess"}
    for name, stage in SURVEY_STAGE.items():
        assert types[name].stage == stage and types[name].stage_source == "survey"


def test_all_catalog_head_types_match() -> None:
    assert cat.unmatched_head_types() == []
    used = {h for p in load_papers() for h in p.head_types}
    assert used == SURVEY_HEAD_TYPES  # every type has at least one paper


def test_alias_resolution() -> None:
    assert cat.canonical_head_type("Previous Head") == "Previous Token Head"
    assert cat.canonical_head_type("prev-token head") == "Previous Token Head"
    assert cat.canonical_head_type("IH") == "Induction Head"
    assert cat.canonical_head_type("induction") == "Induction Head"
    assert cat.canonical_head_type("Answer Head") == "Correct Head"
    assert cat.canonical_head_type("BPE-merging Head") == "Subword Merge Head"
    assert cat.canonical_head_type("suppression head") == "Inhibition Head"
    assert cat.canonical_head_type("no such thing") is None
    with pytest.raises(InputError, match="unknown head type") as info:
        cat.resolve_head_type("Inducton Head")
    assert "Induction Head" in info.value.hint
    assert cat.normalize_stage("lr") == "Latent Reasoning"
    assert cat.normalize_stage("in-context identification") == "In-Context Identification"
    with pytest.raises(InputError):
        cat.normalize_stage("thinking")


def test_detector_links() -> None:
    types = load_head_types()
    linked = {d.detector for ht in types.values() for d in ht.detectors
              if d.kind not in {"application", "defining_test", cat.NOT_TESTABLE}}
    assert linked == set(DETECTOR_REGISTRY.names()) | CAUSAL_LINKS  # every registered detector links its type
    for name, det in DETECTOR_REGISTRY.items():
        if cat.canonical_head_type(det.head_type) is None:
            # a type the survey does not name (the attention sink): it keeps its own name and stage, the
            # catalog links the survey types it also finds
            assert det.also_finds, f"{name}: a non-survey head type should name the survey types it relates to"
        else:
            assert det.head_type in cat.head_types_for_detector(name)
        for head_type, _note in det.also_finds:
            assert head_type in cat.head_types_for_detector(name)
    for ht in types.values():
        for link in ht.detectors:
            assert ht.name in cat.head_types_for_detector(link.detector)
            assert link.kind in {"attention", "causal", "defining_test", "application", cat.NOT_TESTABLE} and link.task
            if link.kind == cat.NOT_TESTABLE:  # no detector on purpose: the note must say what testing needs
                assert link.detector == "none" and link.note and len(link.note) > 60, ht.name
                assert not [d for d in ht.detectors if d.kind in {"attention", "defining_test"}], ht.name
    raw = json.loads(_data("head_types.json"))["head_types"]
    assert all(link["detector"] in CAUSAL_LINKS for item in raw for link in item["detectors"]
               if link["kind"] != cat.NOT_TESTABLE)
    assert "Induction Head" in cat.head_types_for_detector("induction")
    assert cat.head_types_for_detector("successor") == ["Successor Head"]
    assert cat.head_types_for_detector("previous_token") == ["Previous Token Head"]
    assert cat.head_types_for_detector("unknown_detector") == []
    assert [d.detector for d in cat.detectors_for_head_type("Constant Head")] == ["constant_letters"]


@pytest.fixture
def db(tmp_path: Path):
    with Atlas.open(tmp_path / "atlas.db") as atlas:
        yield atlas


def test_catalog_tables_filled_on_create(db: Atlas) -> None:
    counts = {
        t: db.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        for t in ("papers", "head_types", "head_type_papers", "head_type_detectors")
    }
    assert counts["papers"] == 66
    assert counts["head_types"] == len(SURVEY_HEAD_TYPES)
    assert counts["head_type_papers"] == sum(len(p.head_types) for p in load_papers())
    assert counts["head_type_detectors"] == sum(len(h.detectors) for h in load_head_types().values())
    assert db.ensure_catalog() is False  # idempotent
    assert db.conn.execute("SELECT COUNT(*) FROM papers").fetchone()[0] == 66


def test_catalog_refills_when_outdated(tmp_path: Path) -> None:
    path = tmp_path / "atlas.db"
    Atlas.open(path).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("DELETE FROM papers")
    con.execute("UPDATE meta SET value = 'old' WHERE key = 'catalog_fingerprint'")
    con.commit()
    con.close()
    with Atlas.open(path) as db:
        assert len(db.catalog_papers()) == 66


def test_catalog_queries(db: Atlas) -> None:
    papers = db.catalog_papers()
    assert len(papers) == 66
    assert list(papers["date"]) == sorted(papers["date"], reverse=True)

    induction = db.papers_for_head_type("induction head")
    assert len(induction) == 13
    assert "In-context Learning and Induction Heads" in set(induction["title"])
    assert db.papers_for_head_type("IH").equals(induction)
    with pytest.raises(InputError):
        db.papers_for_head_type("Unicorn Head")

    ioi = db.catalog_papers(search="indirect object")
    assert any("Indirect Object Identification" in t for t in ioi["title"])
    assert db.catalog_papers(search="RoPE").shape[0] >= 1
    assert db.catalog_papers(search="zzzz-no-match").empty
    assert len(db.catalog_papers(search="2211.00593")) == 1
    # search words combine with AND, and filters combine with search
    both = db.catalog_papers(head_type="Retrieval Head", search="KV cache")
    assert set(both["arxiv_id"]) == {"2410.10819", "2407.15891"}
    assert db.catalog_papers(search="100%_").empty  # LIKE wildcards are escaped

    ep = db.catalog_papers(stage="EP")
    assert len(ep) > 0
    ep_types = {
        n
        for n, s in db.catalog_head_types().set_index("name")["stage"].items()
        if s == "Expression Preparation"
    }
    for cell in ep["head_types"]:
        assert set(cell.split("; ")) & ep_types

    types = db.catalog_head_types()
    assert set(types["name"]) == SURVEY_HEAD_TYPES
    row = types.set_index("name").loc["Induction Head"]
    assert row["n_papers"] == 13 and "induction" in row["detectors"] and "IH" in row["aliases"]
    assert (types["n_papers"] >= 1).all()
    kr = db.catalog_head_types(stage="Knowledge Recalling")
    assert set(kr["name"]) >= {"Memory Head", "Associative Memory Head", "Negative Head"}
    assert set(kr["stage"]) == {"Knowledge Recalling"}

    for ht in load_head_types().values():
        for link in ht.detectors:
            assert ht.name in db.head_type_for_detector(link.detector)
    assert db.head_type_for_detector("dormant") == ["Active-Dormant Head"]
    assert db.head_type_for_detector("nothing") == []


def test_survey_names_have_no_stray_whitespace() -> None:
    for ht in load_head_types().values():
        for alias in ht.aliases:
            assert alias == alias.strip() and not re.search(r"\(typo", alias)


def test_coverage_counts_detectors_and_applications_by_stage():
    """`headmine catalog --coverage`: every type counted once per stage; a type is covered by a detector of
    its own or by an application, never by a generic method link alone."""
    from typer.testing import CliRunner

    from headmine.cli.catalog import coverage_table
    from headmine.cli.main import app

    rows = coverage_table()
    assert sum(r["types"] for r in rows) == 71
    by_stage = {r["stage"]: r for r in rows}
    ici = by_stage["In-Context Identification"]
    assert "Induction Head" not in ici["missing"] and ici["detector"] >= 10
    assert "Active-Dormant Head" not in ici["missing"]  # the sink detector's dormancy test defines it
    for r in rows:
        assert r["covered"] + len(r["missing"]) == r["types"]
        assert max(r["detector"], r["defining_test"], r["application"]) <= r["covered"]
        assert r["covered"] <= r["detector"] + r["defining_test"] + r["application"]
        assert r["covered"] + r["generic_only"] + r["not_testable"] <= r["types"]  # each type in one column
    assert by_stage["Latent Reasoning"]["not_testable"] >= 1 and "CoT Head" in by_stage["Latent Reasoning"]["missing"]
    lr = by_stage["Latent Reasoning"]
    assert "steer" in _app_names() and "Truthfulness Head" not in lr["missing"] and lr["application"] >= 1
    out = CliRunner().invoke(app, ["catalog", "--coverage"], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "Knowledge Recalling" in out.output
    total = sum(r["covered"] for r in rows)
    assert f"{total} ({total / 71:.0%})" in out.output
    why = CliRunner().invoke(app, ["catalog", "--head-type", "CoT Head"], env={"COLUMNS": "250"})
    assert why.exit_code == 0 and "not testable here" in why.output and "chain-of-thought" in why.output


def _app_names() -> list[str]:
    from headmine.apply import APPLICATIONS

    return APPLICATIONS.names()
