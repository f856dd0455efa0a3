"""Fuzzed inputs (hypothesis): task JSONL files, head specs, plan files and CLI options.

The property each time: the input is either accepted, or refused with ONE clear headmine error that names
the place (file and line, key, or option), never a raw traceback; and a refused command writes nothing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from headmine.cli.main import app
from headmine.core.errors import HeadIndexError, HeadmineError, InputError
from headmine.core.ids import HeadId
from headmine.models.loading import load_model
from headmine.pipeline.plan_file import parse_plan
from headmine.tasks.jsonl import load_jsonl_task

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def toy_tokenizer():
    return load_model("toy-induction").tokenizer


_text = st.text(min_size=0, max_size=40)
_value = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), _text, st.lists(st.integers(), max_size=3),
                   st.dictionaries(_text, st.integers(), max_size=2))
_record = st.fixed_dictionaries({}, optional={"prompt": st.one_of(_text, _value), "target": st.one_of(_text, _value),
                                              "corrupted_prompt": st.one_of(_text, _value),
                                              "wrong_target": st.one_of(_text, _value)})
_line = st.one_of(
    _record.map(lambda r: json.dumps(r).encode()),                           # valid JSON, maybe wrong fields/types
    st.just(b""), st.just(b"   "),                                           # empty lines
    st.binary(max_size=30),                                                  # bytes: bad UTF-8, bad JSON
    st.just(json.dumps({"prompt": "x " * 5000, "target": " a"}).encode()),    # a huge line
    st.lists(st.integers(), max_size=3).map(lambda v: json.dumps(v).encode()),  # JSON that is not an object
)


@FUZZ
@given(lines=st.lists(_line, max_size=6))
def test_fuzzed_task_jsonl_is_loaded_or_refused_at_its_line(toy_tokenizer, lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "task.jsonl")
        path.write_bytes(b"\n".join(lines))
        try:
            task = load_jsonl_task(path, toy_tokenizer, require_single_token=False, require_equal_length=False)
        except HeadmineError as err:
            assert str(path) in str(err)  # names the file (and the line, where there is one)
            assert "Traceback" not in str(err)
        else:
            assert 1 <= len(task.items) <= len(lines)
            assert all(isinstance(it.prompt, str) and it.prompt and it.target for it in task.items)


@FUZZ
@given(text=st.one_of(st.text(max_size=12), st.from_regex(r"[Ll]-?\d{1,3}[Hh]-?\d{1,3}", fullmatch=True)))
def test_fuzzed_head_specs_parse_or_fail_clearly(text):
    g = load_model("toy-induction").geometry
    try:
        head = HeadId.parse(text)
    except InputError as err:
        assert repr(text) in str(err) and "L<layer>H<head>" in err.hint
        return
    try:
        g.check_head(head.layer, head.head)
    except HeadIndexError as err:
        assert "out of range" in str(err)
    else:
        assert 0 <= head.layer < g.n_layers and 0 <= head.head < g.n_heads


_toml_value = st.one_of(st.integers(-5, 10**6), st.booleans(), st.sampled_from(['"smollm2"', '"scan:induction"',
                        '"causal:ablation:ioi"', '"cuda:9"', '"bf16"', '"nope"', '""', '"L99H0"']),
                        st.lists(st.sampled_from(['"smollm2"', '"scan"', '"toy-induction"', "3"]), max_size=3).map(
                            lambda v: "[" + ", ".join(v) + "]"))
_toml_key = st.sampled_from(["model", "models", "job", "jobs", "seed", "n", "device", "dtype", "budget", "batch_size",
                             "gpus", "cpus", "description", "bogus"])
_toml_table = st.dictionaries(_toml_key, _toml_value, max_size=5).map(
    lambda d: "\n".join(f"{k} = {v}" for k, v in d.items()))
_plan = st.lists(st.tuples(st.sampled_from(["", "[defaults]", "[[matrix]]", "[[jobs]]", "[matrix]", "[other]"]),
                           _toml_table), max_size=4).map(lambda parts: "\n".join(f"{h}\n{b}" for h, b in parts))


@FUZZ
@given(text=st.one_of(_plan, st.text(max_size=80)))
def test_fuzzed_plan_files_are_checked_or_refused_by_key(text):
    try:
        plan = parse_plan(text, "fuzz.toml")
    except InputError as err:
        assert "fuzz.toml" in str(err)
    else:
        assert plan.jobs and len({j.key for j in plan.jobs}) == len(plan.jobs)


_option = st.one_of(
    st.tuples(st.just("--n"), st.integers(-3, 3).map(str)),
    st.tuples(st.just("--batch-size"), st.integers(-2, 2).map(str)),
    st.tuples(st.just("--top-k"), st.integers(-2, 40).map(str)),
    st.tuples(st.just("--detectors"), st.sampled_from(["induction", "nope", "", "induction,,sink", "L1H2"])),
    st.tuples(st.just("--device"), st.sampled_from(["cpu", "gpu", "cuda:x", "", "auto:0", "mps"])),
    st.tuples(st.just("--dtype"), st.sampled_from(["float32", "fp8", "int4", "bf17"])),
    st.tuples(st.just("--seed"), st.sampled_from(["1", "-1", "x"])),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=st.lists(_option, min_size=1, max_size=3))
def test_fuzzed_scan_options_run_or_fail_with_one_clear_error(options):
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        atlas = Path(tmp, "a.db")
        args = ["scan", "toy-induction", "--no-causal", "--atlas", str(atlas)] + [x for o in options for x in o]
        if "--detectors" not in args:  # the toy's vocabulary has no words: its scan keeps to token-level detectors
            args += ["--detectors", "induction"]
        result = runner.invoke(app, args)
        out = result.output
        assert "Traceback" not in out and not isinstance(result.exception, (KeyError, AttributeError, TypeError))
        if result.exit_code == 0:
            assert atlas.exists()
        else:
            assert result.exit_code == 2, out
            assert not atlas.exists()  # a refused command writes nothing
