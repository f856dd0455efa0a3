"""Contrastive CHG reports held-out accuracy as its headline (issue 10 §6), on the toy induction model.

The toy (``toy-induction``) copies a repeated random sequence (high token accuracy on the second copy)
and cannot predict fresh random tokens (low accuracy), so rows of the two kinds tell apart which rows
an accuracy was measured on.
"""

from __future__ import annotations

import pytest
import torch

from headmine.atlas import Atlas, write_job
from headmine.causal.contrastive_gating import ContrastConfig, ContrastSplit, split_pair_rows, token_accuracy
from headmine.causal.head_gating import GatingData, repeated_tokens_data, token_data
from headmine.models.loading import LoadedModel
from headmine.pipeline.gating import contrast_model

LENGTH = 8


def _fresh(lm: LoadedModel, n: int, seed: int) -> GatingData:
    """``[bos] x`` followed by fresh random tokens ``y`` (scored on ``y``): nothing to copy."""
    g = torch.Generator().manual_seed(seed)
    v, bos = lm.geometry.vocab_size, lm.tokenizer.bos_token_id
    xs = [(4 + torch.randperm(v - 4, generator=g)[: 2 * LENGTH]).tolist() for _ in range(n)]
    return token_data([[bos, *x[:LENGTH]] for x in xs], [x[LENGTH:] for x in xs], source=f"fresh:{seed}")


def _copy(lm: LoadedModel, n: int, seed: int) -> GatingData:
    return repeated_tokens_data(lm.geometry.vocab_size, n=n, length=LENGTH, seed=seed, low=4,
                                bos=lm.tokenizer.bos_token_id)


def test_contrast_headline_accuracy_is_on_the_heldout_rows(toy, tmp_path) -> None:
    """The headline accuracies (retain_before ... forget_after) are those of the held-out rows, the fit_*
    ones those of the fit rows; here the two kinds of rows differ by far, so a swap cannot pass."""
    split = ContrastSplit(retain=_copy(toy, 6, 1), forget=_copy(toy, 6, 2), eval_retain=_fresh(toy, 4, 3),
                          eval_forget=_fresh(toy, 4, 4), heldout="held-out rows: 4 fresh")
    cfg = ContrastConfig.preset_for("quick", updates=2, batch_size=2, micro_batch=4)
    rep = contrast_model(toy, split, cfg)
    acc, gates = rep.accuracy, rep.result.G[0]
    assert acc["heldout"] == "held-out rows: 4 fresh" and acc["n_heldout"] == 4 and acc["n_fit"] == 6
    for prefix, retain, forget in (("", split.eval_retain, split.eval_forget), ("fit_", split.retain, split.forget)):
        assert acc[f"{prefix}retain_before"] == pytest.approx(float(token_accuracy(toy, retain).mean()), abs=1e-6)
        assert acc[f"{prefix}forget_after"] == pytest.approx(float(token_accuracy(toy, forget, gates).mean()), abs=1e-6)
    assert acc["fit_retain_before"] > acc["retain_before"] + 0.5, acc  # copying vs fresh tokens
    run_id = write_job(rep, tmp_path / "atlas.db")
    with Atlas.open(tmp_path / "atlas.db", readonly=True) as db:
        assert db.artifact(run_id, "accuracy")["heldout"] == "held-out rows: 4 fresh"
        assert db.run(run_id).params["heldout_rows"] == 4
        roles = [row.role for row in db.inputs(run_id)]
        assert roles.count("heldout_retain") == 4 and roles.count("retain") == 6


def test_split_pair_rows_never_fits_on_heldout_rows(toy) -> None:
    """User files: every fit row is a row of the files that is not held out, and the held-out rows are the
    rest, whatever the seed; the share held out follows ``heldout_frac``."""
    retain, forget = _copy(toy, 12, 5), _fresh(toy, 12, 6)
    ids = [tuple(r.tolist()) for r in retain.input_ids]
    for seed in range(3):
        sp = split_pair_rows(retain, forget, heldout_frac=0.25, seed=seed)
        fit = {ids.index(tuple(r.tolist())) for r in sp.retain.input_ids}
        held = {ids.index(tuple(r.tolist())) for r in sp.eval_retain.input_ids}
        assert len(held) == 3 and len(fit) == 9 and not fit & held and fit | held == set(range(12))
        assert sp.heldout == f"held-out rows: 3 of 12 (seed {seed})"
        for i, r in zip(sorted(held), sp.eval_forget.input_ids, strict=True):
            assert torch.equal(r, forget.input_ids[i])  # the pairing is kept
    assert split_pair_rows(retain, forget, seed=0).eval_retain.input_ids.tolist() != \
        split_pair_rows(retain, forget, seed=1).eval_retain.input_ids.tolist()
