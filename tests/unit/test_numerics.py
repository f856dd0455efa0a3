"""NaN and inf: refused at load with the parameter named, and located at run time by layer and head."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from headmine.causal import Scale, intervening
from headmine.causal.head_gating import CHGConfig, fit_chg
from headmine.causal.head_gating import fit as hg_fit
from headmine.causal.head_gating.data import GatingData
from headmine.core.errors import ModelLoadError, NumericalError
from headmine.models.loading import load_model, resolve_embedded
from headmine.models.numerics import install_finite_check
from tests.tiny_models import tiny_model


def _checked(name: str = "llama-mha"):
    lm = tiny_model(name)
    install_finite_check(lm)
    return lm


def _ids(n: int = 2, t: int = 6) -> torch.Tensor:
    return torch.randint(1, 90, (n, t), generator=torch.Generator().manual_seed(0))


def test_nan_in_one_heads_values_names_that_head() -> None:
    lm = _checked()
    lm.forward(_ids())  # finite: no error
    attn = lm.model.model.layers[1].self_attn
    with torch.no_grad():
        attn.v_proj.weight[2 * 8:3 * 8] = float("nan")  # the value rows of head 2 (d_head 8)
    with pytest.raises(NumericalError, match=r"layer 1, in the attention output z of head\(s\) L1H2$|L1H2\n") as err:
        lm.forward(_ids())
    assert "L1H0" not in str(err.value) and "L1H3" not in str(err.value) and err.value.hint


def test_an_edit_that_overflows_is_named() -> None:
    lm = _checked()
    with pytest.raises(NumericalError, match=r"L2H3"), intervening(lm, [Scale(heads=(lm.geometry.heads()[11],), factor=float("inf"))]):
        lm.forward(_ids())
    lm.forward(_ids())  # the hooks are gone with the block: finite again


def test_inf_embedding_is_named() -> None:
    lm = _checked()
    ids = _ids(2, 6)
    with torch.no_grad():
        lm.model.model.embed_tokens.weight[int(ids[1, 2])] = float("inf")
    with pytest.raises(NumericalError, match="first appear at the token embeddings"):
        lm.forward(ids)


def test_nan_weights_are_refused_at_load_naming_the_parameter(tmp_path) -> None:
    folder = tmp_path / "toy"
    shutil.copytree(resolve_embedded("toy-induction"), folder)
    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k in weights if ".layers.1." in k and "o_proj" in k)
    weights[name][0, 0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"NaN or inf weights: .*o_proj.weight \(layer 1\): 1 of"):
        load_model(str(folder))


def test_chg_stops_on_a_non_finite_forward_and_keeps_its_last_good_gates(monkeypatch) -> None:
    lm = _checked()
    ids = _ids(4, 8)
    data = GatingData(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones_like(ids).bool())
    data.loss_mask[:, 0] = False
    real = hg_fit.gated_logprob
    calls = {"n": 0}

    def breaking(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the weights go bad before the fourth update's forward
            with torch.no_grad():
                lm.model.model.layers[0].self_attn.v_proj.weight[8:16] = float("nan")
        return real(*args, **kwargs)

    monkeypatch.setattr(hg_fit, "gated_logprob", breaking)
    res = fit_chg(lm, data, CHGConfig.preset_for("quick", updates=(6, 3, 3), seeds=1, batch_size=4, micro_batch=8))
    assert res.status == "stopped" and "L0H1" in (res.message or "")
    assert res.updates_done == {"G": 3, "G+": 0, "G-": 0}
    assert torch.isfinite(res.G).all()
