"""Batch plan files: a matrix and single jobs expand to checked jobs with stable keys; every mistake is
one InputError naming the file and the key, raised before any job runs (`headmine batch` exits 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from headmine.cli.main import app
from headmine.core.errors import InputError
from headmine.pipeline.plan_file import load_plan, parse_plan

PLAN = """
description = "two models, three kinds"
[defaults]
n = 8
seed = 1
max_retries = 2
dtype = "float32"
resources = { num_cpus = 2, memory = "4GiB" }

[[matrix]]
models = ["toy-induction", "smollm2"]
jobs = ["scan:induction, previous_token", "mine:quick"]
methods = ["ablate", "dla"]
tasks = ["induction"]
n = [4, 16]
causal = false

[[jobs]]
model = "toy-induction"
job = "gate:induction"
preset = "quick"
seeds = 1
resources = { num_gpus = 1 }
max_retries = 0
"""


def test_matrix_and_jobs_expand_with_settings() -> None:
    plan = parse_plan(PLAN, "p.toml")
    # 2 models x (scan, ablation, dla) x n in (4, 16), 2 models x mine (it reads no n: one job each), 1 gate job
    assert len(plan.jobs) == 2 * 3 * 2 + 2 + 1
    specs = sorted({j.spec for j in plan.jobs})
    assert specs == ["ablation:induction", "dla:induction", "gate:induction", "mine:quick",
                     "scan:induction,previous_token"]
    scan = [j for j in plan.jobs if j.kind == "scan" and j.model == "smollm2"]
    assert sorted(j.settings["n"] for j in scan) == [4, 16]
    assert scan[0].settings == {"n": 4, "seed": 1, "causal": False}
    assert scan[0].resources.num_cpus == 2 and scan[0].resources.memory == 4 * 1024**3
    assert scan[0].max_retries == 2 and scan[0].dtype == "float32" and scan[0].device == "cpu"
    gate = next(j for j in plan.jobs if j.kind == "gate")
    assert gate.settings == {"n": 8, "seed": 1, "preset": "quick", "seeds": 1}
    assert gate.resources.ray_options() == {"num_cpus": 2.0, "num_gpus": 1.0, "memory": 4 * 1024**3}
    assert gate.max_retries == 0


def test_a_job_listed_twice_is_an_error_naming_both_places() -> None:
    twice = PLAN + '[[jobs]]\nmodel = "smollm2"\njob = "mine:quick"\n'
    with pytest.raises(InputError, match=r"p.toml: \[\[jobs\]\] #2: the same job as \[\[matrix\]\] #1 "
                                         r"\(smollm2 x mine:quick\)"):
        parse_plan(twice, "p.toml")


def test_keys_are_stable_and_change_with_what_changes_the_result() -> None:
    text = """
[[jobs]]
model = "toy-induction"
job = "scan:induction"
n = 4
resources = { num_cpus = 1 }
"""
    key = parse_plan(text).jobs[0].key
    assert parse_plan(text).jobs[0].key == key
    assert parse_plan(text.replace("num_cpus = 1", "num_cpus = 2")).jobs[0].key == key  # resources: same job
    assert parse_plan(text.replace("n = 4", "n = 5")).jobs[0].key != key
    assert parse_plan(text.replace('"scan:induction"', '"scan: induction"')).jobs[0].key == key  # normalised
    assert parse_plan(text + 'dtype = "bfloat16"\n').jobs[0].key != key
    assert key.startswith("batch-")


BAD = [
    ("colour = 1\n[[jobs]]\nmodel='toy-induction'\njob='scan'", "plan.colour: unknown key 'colour'"),
    ("[defaults]\nbudget = 'quick'\n[[jobs]]\nmodel='toy-induction'\njob='scan'", r"\[defaults\].budget: unknown key"),
    ("[[jobs]]\nmodel='smolm2'\njob='scan'", r"\[\[jobs\]\] #1.model: unknown model 'smolm2'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan:inductoin'", r"#1.job: unknown detector 'inductoin'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='ablashun:ioi'", r"#1.job: unknown job 'ablashun'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='ablation:iio'", r"#1.job: unknown task 'iio'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='ablation'", r"#1.job: job 'ablation' names no task"),
    ("[[jobs]]\nmodel='toy-induction'\njob='mine:huge'", r"#1.job: unknown mine budget 'huge'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='gate:ioi'\npreset='fast'", r"#1.preset: unknown CHG preset 'fast'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\ndtype='float8'", r"#1.dtype: unknown dtype 'float8'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\ndevice='tpu'", r"#1.device: unknown device 'tpu'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\nn=0", r"#1.n: expected an integer >= 1, got 0"),
    ("[[jobs]]\nmodel='toy-induction'\njob='gate:ioi'\nupdates=[1, 2]", r"#1.updates: expected one or three integers"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\nshots=2", r"#1.shots: a scan job does not read 'shots'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='ablation:ioi'\noptions={mood='mean'}",
     r"#1.options.mood: method 'ablation' has no option 'mood'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\nresources={gpus=1}", r"#1.resources.gpus: unknown key 'gpus'"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\nresources={memory='lots'}", r"#1.resources.memory: cannot read"),
    ("[[jobs]]\nmodel='toy-induction'\njob='scan'\n[[jobs]]\nmodel='toy-induction'\njob='scan'",
     r"\[\[jobs\]\] #2: the same job as \[\[jobs\]\] #1"),
    ("[[matrix]]\nmodels=['toy-induction']\nmethods=['dla']", r"\[\[matrix\]\] #1: methods and tasks go together"),
    ("[matrix]\nmodels=['toy-induction']\njobs=['scan']\nn=[]", r"\[matrix\].n: an empty list"),
    ("[[jobs]]\nmodel='toy-induction'", r"\[\[jobs\]\] #1: a job needs job ="),
    ("[defaults]\nn = 4", "plan: no jobs"),
    ("[[jobs]\nmodel='x'", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_every_mistake_names_the_file_and_the_key(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        parse_plan(text, "plans/x.toml")
    assert err.value.problem.startswith(str(Path("plans/x.toml")) + ":")


def test_paths_are_read_from_the_plan_folder(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    task = tmp_path / "tasks" / "mine.jsonl"
    task.write_text('{"prompt": "The capital of France is", "target": " Paris"}\n')
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text("[[jobs]]\nmodel = 'toy-induction'\njob = 'dla:tasks/mine.jsonl'\n")
    job = load_plan(plan_file).jobs[0]
    assert job.spec == f"dla:{task.resolve()}"
    with pytest.raises(InputError, match="no plan file"):
        load_plan(tmp_path / "missing.toml")


def test_cli_rejects_a_bad_plan_before_anything_runs(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text("[[jobs]]\nmodel = 'toy-induction'\njob = 'scan:nope'\n")
    atlas = tmp_path / "out" / "atlas.db"
    out = CliRunner().invoke(app, ["batch", str(plan_file), "--atlas", str(atlas)])
    assert out.exit_code == 2
    text = " ".join(out.output.split())
    assert "unknown detector 'nope'" in text and "plan.toml" in text and "Traceback" not in out.output
    assert not atlas.parent.exists()  # nothing was created


def test_the_readme_plan_is_a_valid_plan() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Many jobs", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    plan = parse_plan(block, "README.md")
    assert len(plan.jobs) == 2 * 2 + 1
    gpu = plan.jobs[-1]
    assert (gpu.device, gpu.dtype, gpu.settings["options"]) == ("cuda", "bfloat16", {"mode": "mean"})
    assert gpu.resources.ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0, "memory": 4 * 1024**3}
