"""Loading: bad input gives one clear error and leaves no half-written cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from headmine.core.errors import InputError, ModelLoadError
from headmine.models import loading
from headmine.models.loading import load_model, resolve_embedded


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("HEADMINE_CACHE", str(root))
    return root


def test_unknown_name_lists_the_embedded_models(cache):
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'") as err:
        load_model("no-such-model")
    assert "smollm2" in str(err.value) and "gemma3-270m" in str(err.value)


def test_missing_gguf_file(cache, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"))


def test_not_a_gguf_file(cache, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(bad))


def test_truncated_gguf_leaves_no_cache(cache, tmp_path):
    src = resolve_embedded("smollm2")
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as fh, open(cut, "wb") as out:
        out.write(fh.read(20 << 20))  # first 20 MB of ~98 MB
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(str(cut))
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


def test_folder_without_config(cache, tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path / "weights"))


def test_failed_conversion_leaves_no_half_written_entry(cache, tmp_path, monkeypatch):
    """An exception while writing the cache (e.g. disk full) leaves neither a partial nor a final folder."""
    import transformers
    from transformers import PreTrainedModel

    from tests.tiny_models import tiny_model

    def boom(self, *args, **kwargs):
        Path(args[0], "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    tiny = tiny_model("llama-gqa").model  # stands in for the slow de-quantisation
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        loading._gguf_to_cache(resolve_embedded("smollm2"))
    assert list((cache / "gguf").iterdir()) == []


class _NoTokenizer:
    def save_pretrained(self, folder) -> None:
        Path(folder, "tokenizer_config.json").write_text("{}")


@pytest.mark.parametrize("damage", ["bit flip", "truncation", "no hashes"])
def test_a_damaged_cache_entry_is_detected_and_converted_again(cache, monkeypatch, damage):
    """A bit-flipped or truncated cached weight file never loads: it is detected by its recorded SHA-256,
    discarded with a warning, and converted again from the GGUF file; an entry without hashes (written
    before they were recorded) is converted again silently."""
    import transformers

    from tests.tiny_models import tiny_model

    tiny = tiny_model("llama-gqa").model  # stands in for the slow de-quantisation
    calls = []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: calls.append(1) or tiny)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _NoTokenizer())
    gguf = resolve_embedded("smollm2")
    folder, _ = loading._gguf_to_cache(gguf)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    assert loading.cache_damage(folder) is None and len(calls) == 1
    assert loading._gguf_to_cache(gguf)[0] == folder and len(calls) == 1  # intact: used as it is
    if damage == "bit flip":
        raw = bytearray(good)
        raw[len(raw) // 2] ^= 0x01
        weights.write_bytes(bytes(raw))
    elif damage == "truncation":
        weights.write_bytes(good[: len(good) // 3])
    else:
        (folder / loading.CACHE_MANIFEST).write_text(json.dumps({"gguf": str(gguf)}))
    assert loading.cache_damage(folder) is not None
    if damage == "no hashes":
        loading._gguf_to_cache(gguf)
    else:
        with pytest.warns(RuntimeWarning, match="damaged"):
            loading._gguf_to_cache(gguf)
    assert len(calls) == 2 and loading.cache_damage(folder) is None and weights.read_bytes() == good
    assert [p.name for p in (cache / "gguf").iterdir()] == [folder.name]  # nothing damaged left behind


@pytest.mark.slow
def test_local_folder_and_cache_round_trip(smollm2, tmp_path):
    """The cache folder is a plain HF folder: loading it as a local model gives the same logits."""
    folder = Path(smollm2.provenance.source)
    digest = smollm2.provenance.file_hash
    cached = loading.cache_root() / "gguf" / digest[:24]
    assert (cached / "config.json").exists() and "quantization_config" not in json.loads((cached / "config.json").read_text())
    copy = tmp_path / "smol"
    shutil.copytree(cached, copy)
    local = load_model(str(copy))
    assert local.provenance.source_kind == "local"
    enc = smollm2.tokenize(["The capital of France is"])
    assert torch.equal(local.forward(**enc), smollm2.forward(**enc))
    assert folder.suffix == ".gguf"


@pytest.mark.slow
def test_prompt_longer_than_context(smollm2):
    with pytest.raises(InputError, match="context of 8192 tokens"):
        smollm2.forward(torch.zeros(1, 8193, dtype=torch.long))
