"""The shared application pieces: artifacts round-trip and refuse damage, applied() works during
generate, splits never leak a group, effect rows say when a change is not significant, and the
report shows an application run (escaped)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from headmine.apply import (
    ApplyResult,
    HeadArtifact,
    applied,
    effect_row,
    generate_texts,
    geometry_of,
    group_split,
    random_head_sets,
)
from headmine.apply.evaluation import corpus_cost, corpus_windows, random_baseline_row
from headmine.apply.registry import APPLICATIONS, Application, register_application
from headmine.atlas import write_job
from headmine.causal import Zero, intervening
from headmine.core.errors import InputError
from headmine.core.ids import HeadId
from headmine.report import build_report
from tests.tiny_models import tiny_model


def _artifact(lm) -> HeadArtifact:
    return HeadArtifact(kind="test_zero", model=lm.name, geometry=geometry_of(lm.geometry),
                        heads=(HeadId(0, 1), HeadId(2, 3)), params={"alpha": 1.5, "positions": "all"},
                        tensors={"direction": torch.arange(8.0)}, info={"acc": float("nan"), "n": 3})


def test_artifact_round_trip(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    art = _artifact(lm)
    js, st = art.save(tmp_path / "a")
    assert js.name == "a.json" and st.name == "a.safetensors"
    back = HeadArtifact.load(tmp_path / "a.safetensors")
    assert back.kind == "test_zero" and back.heads == art.heads and back.params == {"alpha": 1.5, "positions": "all"}
    assert torch.equal(back.tensors["direction"], art.tensors["direction"])
    assert back.info["acc"] is None  # NaN is not JSON: stored as null
    assert not list(tmp_path.glob("*.tmp"))


def test_artifact_refuses_damage(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    _artifact(lm).save(tmp_path / "a")
    other = HeadArtifact(kind="test_zero", model="x", geometry=geometry_of(lm.geometry), tensors={"d": torch.ones(2)})
    other.save(tmp_path / "b")
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")  # a JSON with another save's tensors
    with pytest.raises(InputError, match="does not belong"):
        HeadArtifact.load(tmp_path / "a")
    with pytest.raises(InputError, match="no artifact file"):
        HeadArtifact.load(tmp_path / "missing")
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "c.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="not valid JSON"):
        HeadArtifact.load(tmp_path / "c")
    other.save(tmp_path / "b")
    doc = json.loads((tmp_path / "b.json").read_text())
    (tmp_path / "b.json").write_text(json.dumps(doc | {"version": 99}))
    with pytest.raises(InputError, match="newer headmine"):
        HeadArtifact.load(tmp_path / "b")
    with pytest.raises(InputError, match="does not exist"):
        _artifact(lm).save(tmp_path / "nope" / "a")


class _ZeroHeads(Application):
    name = "test_zero"
    title = "zero heads (test)"

    def apply(self, lm, artifact):
        return intervening(lm, [Zero(heads=artifact.heads)])


@contextmanager
def _registered():
    register_application(_ZeroHeads())
    try:
        yield
    finally:
        APPLICATIONS.unregister("test_zero")


def test_applied_matches_the_intervention_and_checks_geometry() -> None:
    lm = tiny_model("llama-gqa")
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    art = _artifact(lm)
    plain = lm.forward(ids)
    with _registered():
        with applied(lm, art):
            edited = lm.forward(ids)
        with intervening(lm, [Zero(heads=art.heads)]):
            oracle = lm.forward(ids)
        assert torch.equal(edited, oracle) and not torch.allclose(edited, plain)
        assert torch.equal(lm.forward(ids), plain)  # hooks removed
        other = tiny_model("llama-mha")
        with pytest.raises(InputError, match="head geometry differs"), applied(other, art):
            pass
    with pytest.raises(InputError, match="unknown application"), applied(lm, art):
        pass


@pytest.mark.slow
def test_applied_acts_during_generate(smollm2) -> None:
    """Zeroing a real model's heads through an artifact changes what generate writes, and only inside the block."""
    art = HeadArtifact(kind="test_zero", model=smollm2.name, geometry=geometry_of(smollm2.geometry),
                       heads=tuple(HeadId(layer, h) for layer in range(2) for h in range(9)))
    prompt = ["The capital of France is"]
    plain = generate_texts(smollm2, prompt, max_new_tokens=6)
    with _registered():
        edited = generate_texts(smollm2, prompt, max_new_tokens=6, edit=lambda: applied(smollm2, art))
    assert edited != plain
    assert generate_texts(smollm2, prompt, max_new_tokens=6) == plain
    windows = corpus_windows(smollm2, n=2, seq_len=32)
    with _registered():
        cost = corpus_cost(smollm2, windows, lambda: applied(smollm2, art))
    assert cost["cost"] > 0.1  # layers 0-1 silenced: the corpus gets clearly harder to predict


def test_group_split_never_splits_a_group() -> None:
    groups = [f"q{i // 3}" for i in range(60)]
    fit, held = group_split(groups, heldout_frac=0.3, seed=1)
    assert sorted(fit + held) == list(range(60))
    assert {groups[i] for i in fit}.isdisjoint({groups[i] for i in held})
    assert len({groups[i] for i in held}) == 6
    assert group_split(groups, heldout_frac=0.3, seed=1) == (fit, held)
    with pytest.raises(InputError):
        group_split(["a"] * 5)


def test_random_head_sets_exclude_and_repeat() -> None:
    heads = [HeadId(layer, h) for layer in range(3) for h in range(4)]
    sets = random_head_sets(heads, 3, 5, seed=2, exclude=heads[:4])
    assert len(sets) == 5 and all(len(s) == 3 and not set(s) & set(heads[:4]) for s in sets)
    assert sets == random_head_sets(heads, 3, 5, seed=2, exclude=heads[:4])
    with pytest.raises(InputError):
        random_head_sets(heads, 20, 1)


def test_effect_rows_report_significance() -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(0, 1, 200)
    up = effect_row("held-out", "top heads", "logprob", before + 0.5, before)
    assert up["significant"] and up["delta_ci"][0] > 0.3
    noise = effect_row("held-out", "random heads", "logprob", before + rng.normal(0, 1, 200), before)
    assert noise["significant"] is False and noise["delta_ci"][0] < 0 < noise["delta_ci"][1]
    rand = random_baseline_row("held-out", "random", "x", [before + 1, before + 3], before)
    assert rand["draw_means"] == pytest.approx([before.mean() + 1, before.mean() + 3])
    assert rand["delta"] == pytest.approx(2.0)


def test_report_shows_an_application_run(tmp_path) -> None:
    lm = tiny_model("llama-gqa")
    rows = [effect_row("held-out", "<script>alert(1)</script>", "accuracy", [1, 0, 1, 1], [0, 0, 1, 0])]
    res = ApplyResult(kind="steer", title="Steering <b>", paper="Li et al. 2023", model=lm.name,
                      model_info=lm.model_info(), config={"seed": 0}, heads=[HeadId(1, 2)], chosen={"alpha": 5.0},
                      tables={"truthful choice": rows}, notes=["not significant: the interval includes 0"])
    atlas = tmp_path / "a.db"
    write_job(res, atlas)
    files = build_report(atlas, tmp_path / "report")
    html = "".join(p.read_text() for p in files.all if p.suffix == ".html")
    assert 'id="applications"' in html and "truthful choice" in html and "L1H2" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Steering &lt;b&gt;" in html and "not significant: the interval includes 0" in html


def test_every_application_has_its_cli_verb_and_a_title() -> None:
    """The six applications of issue 13 are registered, each with a title, a paper and a `headmine` verb."""
    from typer.main import get_command

    from headmine.apply import APPLICATIONS
    from headmine.cli.main import app

    names = set(APPLICATIONS.names())
    assert {"steer", "fv", "safety", "inject", "kv", "prune"} <= names
    verbs = set(get_command(app).commands)  # type: ignore[attr-defined]
    for name in names:
        application = APPLICATIONS.get(name)
        assert name in verbs, f"application {name} has no `headmine {name}` command"
        assert application.title and application.paper
