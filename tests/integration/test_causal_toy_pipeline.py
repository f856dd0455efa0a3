"""Toy induction model: path patching finds prev-token -> induction K-composition; pipeline bad
input gives clear errors naming the line and leaves no run in the atlas; CLI smoke test."""

from __future__ import annotations

import json

import pytest
import torch

from headmine.atlas import write_job
from headmine.causal.methods import MethodConfig, get_method
from headmine.causal.metrics import AnswerMetric
from headmine.causal.path_patching import path_patching
from headmine.core.errors import HeadmineError
from headmine.core.ids import HeadId
from headmine.pipeline.causal import run_causal
from headmine.tasks import load_task

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


def config(method: str, **options) -> MethodConfig:
    return get_method(method).config(**options)


def _fresh_first_copy(ids: torch.Tensor, seq_len: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """Corrupt the FIRST copy of r (what the previous-token heads read) with unused tokens."""
    g = torch.Generator().manual_seed(seed)
    out = ids.clone()
    for b in range(ids.shape[0]):
        used = set(ids[b].tolist())
        pool = [t for t in range(4, vocab) if t not in used]
        pick = torch.randperm(len(pool), generator=g)[:seq_len]
        out[b, 1:1 + seq_len] = torch.tensor([pool[i] for i in pick])
    return out


def test_path_patching_finds_previous_token_to_induction_composition(toy):
    ps = load_task("induction", toy.tokenizer, n=24, seed=0, seq_len=20)
    clean = ps.clean_batch()
    corrupted = _fresh_first_copy(clean.input_ids, 20, toy.geometry.vocab_size)
    metric = AnswerMetric.from_batch(clean, "answer_logprob")
    receivers = [HeadId(1, 0), HeadId(1, 2), HeadId(1, 3)]  # induction heads (README scores 0.99, 0.99, 0.79)
    res = path_patching(toy, clean.input_ids, clean.attention_mask, corrupted, clean.attention_mask, metric,
                        receivers=receivers, receiver_input="k")
    effects = res.effects[0]  # senders in layer 0
    assert float(res.baseline.mean()) > -0.1  # the model predicts the induction answer
    # previous-token heads L0H0 (0.89) and L0H3 (0.71) carry the key-side signal; the others do not
    assert effects[0] < -2.0 and effects[3] < -0.5
    assert effects[1].abs() < 0.2 and effects[2].abs() < 0.2
    assert torch.isnan(res.values[1]).all()


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + ("\n" if rows else ""))
    return str(path)


GOOD = {"prompt": "t3 t7 t9 t3 t7", "target": "t9", "corrupted_prompt": "t3 t7 t9 t4 t8", "wrong_target": "t4"}


@pytest.mark.parametrize("case,method,needle", [
    ("no_target", "ablation", ":2"),
    ("multi_token", "ablation", ":2"),
    ("length_mismatch", "patching", ":2"),
    ("empty", "ablation", "empty"),
])
def test_bad_input_names_the_line_and_writes_nothing(toy, tmp_path, case, method, needle):
    bad = dict(GOOD)
    if case == "no_target":
        del bad["target"]
    elif case == "multi_token":
        bad["target"] = "t9 t10"
    elif case == "length_mismatch":
        bad["corrupted_prompt"] = "t3 t7 t9 t4"
    rows = [] if case == "empty" else [GOOD, bad]
    path = _jsonl(tmp_path / "task.jsonl", rows)
    atlas = tmp_path / "atlas.db"
    with pytest.raises(HeadmineError) as err:
        run = run_causal(toy, config(method, task=path, n=10))
        write_job(run, str(atlas))
    assert needle in str(err.value.problem)
    if atlas.exists():
        from headmine.atlas import Atlas

        with Atlas.open(atlas) as db:
            assert len(db.runs()) == 0


def test_runs_land_in_the_atlas_with_inputs(toy, tmp_path):
    from headmine.atlas import Atlas

    path = _jsonl(tmp_path / "task.jsonl", [GOOD, {**GOOD, "prompt": "t5 t6 t8 t5 t6", "target": "t8",
                                                   "corrupted_prompt": "t5 t6 t8 t1 t2"}])
    atlas = str(tmp_path / "atlas.db")
    ids = []
    for cfg in (config("ablation", task=path, mode="mean"), config("patching", task=path),
                config("attribution", task=path, ig_steps=2), config("dla", task=path),
                config("logit_lens", task=path), config("path_patching", task=path)):
        run = run_causal(toy, cfg)
        assert {"component", "layer", "head", "method", "metric", "value", "n", "stderr"} <= set(run.frame.columns)
        ids.append(write_job(run, atlas))
    with Atlas.open(atlas) as db:
        runs = db.runs()
        assert len(runs) == 6
        scores = db.scores()
        assert len(scores) > 0
    assert len(set(ids)) == 6


def test_cli_ablate_and_lens(toy, tmp_path):
    from typer.testing import CliRunner

    from headmine.cli.main import app

    path = _jsonl(tmp_path / "task.jsonl", [GOOD])
    html = tmp_path / "heat.html"
    r = CliRunner().invoke(app, ["ablate", "toy-induction", "--task", path, "--html", str(html)])
    assert r.exit_code == 0, r.output
    assert "L0" in r.output or "layer" in r.output
    assert html.exists() and "<script" in html.read_text()[:200000]
    r = CliRunner().invoke(app, ["lens", "toy-induction", "--task", path])
    assert r.exit_code == 0, r.output
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "t3 t4"}])
    r = CliRunner().invoke(app, ["patch", "toy-induction", "--task", bad])
    assert (r.exit_code == 2 and "line 1" in r.output.replace("\n", " ")) or ":1" in r.output
