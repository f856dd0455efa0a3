"""Provenance: everything needed to say where a result came from and to recompute it."""

from __future__ import annotations

import hashlib
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

_TRACKED = ("headmine", "torch", "transformers", "safetensors", "gguf", "accelerate", "numpy")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape numbers, plus Python."""
    out = {"python": platform.python_version()}
    for name in _TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, kw_only=True)
class ModelProvenance:
    """Where the weights came from and how they were loaded."""

    name: str
    source: str
    source_kind: str  # "embedded" | "hub" | "local" | "gguf"
    file_hash: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    attn_implementation: str = "eager"
    device: str = "cpu"  # as asked: "cpu", "cuda:0", or "auto" (accelerate spread the layers)
    placement: dict[str, Any] | None = None  # parameters per device and accelerate's device map (models.placement)
    model_type: str = ""
    library_versions: dict[str, str] = field(default_factory=library_versions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
