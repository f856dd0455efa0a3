"""A third-party package adds a detector, a probe task, a causal method and a model family through
entry points, with no change to headmine: the four examples of docs/DEVELOPING.md, installed into a
temporary folder (a package plus its ``.dist-info`` with ``entry_points.txt``). They show in `scan`,
`heads`, the report and `method`, and the adapter is chosen for its model family. Without the folder on
the path none of it exists.

Each command runs in a fresh subprocess, as a user's would, so the registries start empty.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_examples import write_package

pytestmark = pytest.mark.slow

PACKAGE = "hm_demo_plugin"
ENTRY_POINTS = f"""
[headmine.tasks]
short_repeats = {PACKAGE}.task

[headmine.detectors]
self_attention = {PACKAGE}.detector

[headmine.methods]
head_scaling = {PACKAGE}.method

[headmine.models]
starcoder2 = {PACKAGE}.model

[headmine.applications]
silence = {PACKAGE}.application
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    write_package(root, PACKAGE)
    dist = root / f"{PACKAGE}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hm-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def headmine(*args: str, plugin: Path | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if plugin is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(plugin), env.get("PYTHONPATH", ""))))
    return subprocess.run([sys.executable, "-m", "headmine", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_plugin_detector_and_task_show_in_scan_heads_and_report(plugin_path, tmp_path):
    atlas = tmp_path / "atlas.db"
    scan = headmine("scan", "toy-induction", "-d", "self_attention", "--atlas", str(atlas), "--top-k", "2",
                    plugin=plugin_path, cwd=tmp_path)
    assert scan.returncode == 0, scan.stderr + scan.stdout
    assert "self_attention" in scan.stdout and "Diagonal Head" in scan.stdout
    with sqlite3.connect(atlas) as db:
        task, params = db.execute("SELECT task, params_json FROM runs WHERE kind = 'scan'").fetchone()
        assert "short_repeats" in task and json.loads(params)["detectors"] == ["self_attention"]
        n_scores = db.execute("SELECT COUNT(*) FROM scores WHERE method = 'self_attention'").fetchone()[0]
        assert n_scores == 2 * 4  # the toy: 2 layers x 4 heads
        checked = db.execute("SELECT COUNT(*) FROM scores WHERE method = 'causal:self_attention'").fetchone()[0]
        assert checked > 0  # the plugin's CausalCheckSpec ran on the plugin task's evaluation
        labels = {r[0] for r in db.execute("SELECT head_type FROM labels WHERE method = 'self_attention'")}
        assert labels == {"Diagonal Head"}
        link = db.execute("SELECT task FROM head_type_detectors WHERE detector = 'self_attention'").fetchall()
        assert link == [("short_repeats",)]

    heads = headmine("heads", "--atlas", str(atlas), "--type", "diagonal", plugin=plugin_path, cwd=tmp_path)
    assert heads.returncode == 0, heads.stderr
    assert "self_attention" in heads.stdout and "L0H2" in heads.stdout  # the toy's diagonal head (0.97)

    out = tmp_path / "report"
    report = headmine("report", "--atlas", str(atlas), "--out", str(out), plugin=plugin_path, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = "\n".join(p.read_text(encoding="utf-8") for p in out.glob("*.html"))
    assert "self_attention" in html and "Diagonal Head" in html


def test_plugin_method_runs_from_the_cli(plugin_path, tmp_path):
    listed = headmine("methods", plugin=plugin_path, cwd=tmp_path)
    assert listed.returncode == 0 and "head_scaling" in listed.stdout
    atlas = tmp_path / "atlas.db"
    run = headmine("method", "head_scaling", "toy-induction", "--task", "induction", "--n", "4", "--set", "factor=0.25",
                   "--atlas", str(atlas), plugin=plugin_path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr + run.stdout
    with sqlite3.connect(atlas) as db:
        params = json.loads(db.execute("SELECT params_json FROM runs").fetchone()[0])
        assert params["config"]["factor"] == 0.25 and params["config"]["method"] == "head_scaling"
        assert db.execute("SELECT COUNT(*) FROM scores WHERE method = 'head_scaling'").fetchone()[0] == 8


FAMILY_PROBE = (
    "from transformers import AutoModelForCausalLM, Starcoder2Config\n"
    "from headmine.core.errors import UnsupportedModelError\n"
    "from headmine.models.families import adapter_for, supported_families\n"
    "cfg = Starcoder2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,"
    " num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=0)\n"
    "model = AutoModelForCausalLM.from_config(cfg)\n"
    "try:\n"
    "    a = adapter_for(model)\n"
    "    print(type(a).__name__, 'starcoder2' in supported_families(), a.geometry.n_kv_heads)\n"
    "except UnsupportedModelError as err:\n"
    "    print('unsupported', 'starcoder2' in str(err))\n"
)


def test_plugin_model_family_gets_its_adapter(plugin_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(plugin_path), os.environ.get("PYTHONPATH", ""))))}
    out = subprocess.run([sys.executable, "-c", FAMILY_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Starcoder2Adapter", "True", "2"]
    plain = subprocess.run([sys.executable, "-c", FAMILY_PROBE], capture_output=True, text=True, timeout=300)
    assert plain.stdout.split() == ["unsupported", "True"]  # without the plugin: a clear "no adapter" error


APPLICATION_PROBE = """
import torch
from headmine.apply import APPLICATIONS, HeadArtifact, applied
from headmine.core.ids import HeadId
from headmine.models.loading import load_model
print("silence" in APPLICATIONS)
lm = load_model("toy-induction")
art = HeadArtifact(kind="silence", model=lm.name, geometry={}, heads=(HeadId(1, 0),), params={"factor": 0.0})
ids = torch.arange(5, 17)[None]
try:
    with applied(lm, art):
        print(not torch.equal(lm.forward(ids), load_model("toy-induction").forward(ids)))
except Exception as err:
    print(type(err).__name__)
"""


def test_plugin_application_applies(plugin_path):
    """An application from an entry point is found by the registry and applied by ``applied``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(plugin_path), os.environ.get("PYTHONPATH", ""))))}
    out = subprocess.run([sys.executable, "-c", APPLICATION_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    plain = subprocess.run([sys.executable, "-c", APPLICATION_PROBE], capture_output=True, text=True, timeout=300)
    assert plain.stdout.split() == ["False", "InputError"]  # without the plugin: "unknown application"


def test_without_the_plugin_nothing_of_it_exists(tmp_path):
    scan = headmine("scan", "toy-induction", "-d", "self_attention", plugin=None, cwd=tmp_path)
    assert scan.returncode == 2
    assert "unknown detector 'self_attention'" in scan.stderr


def test_a_broken_plugin_is_named_not_swallowed(tmp_path):
    root = tmp_path / "site"
    (root / "hm_broken").mkdir(parents=True)
    (root / "hm_broken" / "__init__.py").write_text("raise RuntimeError('boom')\n")
    dist = root / "hm_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hm-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[headmine.detectors]\nbroken = hm_broken\n")
    scan = headmine("scan", "toy-induction", plugin=root, cwd=tmp_path)
    assert scan.returncode == 2
    assert "plugin 'broken'" in scan.stderr and "hm-broken" in scan.stderr and "boom" in scan.stderr
