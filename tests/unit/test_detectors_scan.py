"""Scan plumbing without a real checkpoint: config validation, bad task tokens, CLI errors, one-pass grouping."""

from __future__ import annotations

import pytest
import torch

import headmine.capture.run as cap
import headmine.pipeline.scan as scan
from headmine.core.errors import InputError, TaskError
from headmine.pipeline.scan import ScanConfig
from headmine.tasks import PROBES, TokenBatch, load_probe
from tests.tiny_models import tiny_model


class CharTokenizer:
    """Every character is a token: no name or ordinal word is a single token here."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0
    all_special_ids = (0, 1, 2)

    def __call__(self, text, add_special_tokens=True, **kw):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_task_tokens_that_are_not_single_tokens_fail_clearly():
    tok = CharTokenizer()
    with pytest.raises(TaskError, match="single token"):
        load_probe("ioi_names", tok, seed=0)
    # ordinal sets keep only their single-token runs (digits and letters are single characters here)
    probe = load_probe("ordinal_tokens", tok, seed=0)
    assert all(len(CharTokenizer().decode([t])) == 1 for t in probe.meta["token_ids"].tolist())


def test_scan_config_validation():
    with pytest.raises(InputError):
        ScanConfig(batch_size=0)
    with pytest.raises(InputError, match="unknown probe"):
        ScanConfig(probe_params={"nope": {}})
    assert ScanConfig().params_for("repeated_tokens")["n"] >= 1
    # every registered probe task is a valid key, with its own defaults under the overrides
    cfg = ScanConfig(probe_params={"needle": {"n": 1}})
    assert cfg.params_for("needle") == {**PROBES.get("needle").defaults, "n": 1}


def test_cli_rejects_unknown_detector_before_loading():
    from typer.testing import CliRunner

    from headmine.cli.main import app

    out = CliRunner().invoke(app, ["scan", "smollm2", "--detectors", "induction,bogus"])
    assert out.exit_code == 2
    assert "unknown detector 'bogus'" in out.output


def test_one_capture_pass_per_probe_task(monkeypatch):
    """Detectors reading the same probe share one forward per batch."""
    lm = tiny_model("llama-gqa")
    calls = []

    def fake_probe(task, tokenizer, **params):
        ids = torch.randint(3, 90, (6, 10))
        return TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), task=task)

    orig = cap.run_capture

    def counting(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(scan, "load_probe", fake_probe)
    monkeypatch.setattr(cap, "run_capture", counting)
    res = scan.scan_model(lm, ScanConfig(detectors=("induction", "duplicate_token", "prefix_matching"), batch_size=3,
                                         causal=False))
    assert len(calls) == 2  # 6 sequences / batch 3, one pass for three detectors
    assert set(res.scores.method) == {"induction", "duplicate_token", "prefix_matching"}
