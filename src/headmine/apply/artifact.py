"""What an application saves: head lists, parameters and tensors, as ``<stem>.json`` + ``<stem>.safetensors``.

Every application (steering vectors, function vectors, safety heads, injection heads, KV head
classes, pruning orders) saves one :class:`HeadArtifact`. The JSON half holds everything but the
tensors (kind, model, geometry, heads, parameters, results) and the SHA-256 of the tensor file, so a
JSON paired with the wrong tensor file is refused; the safetensors half holds the tensors (no
pickle anywhere). Both are written to temporary names and renamed into place, so an interrupted save
leaves no half-written artifact. :func:`applied` (in :mod:`headmine.apply.registry`) applies a loaded
artifact during ``generate``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from headmine.apply.result import jsonable
from headmine.core.errors import InputError
from headmine.core.ids import HeadId

FORMAT = "headmine.apply"
FORMAT_VERSION = 1
GEOMETRY_KEYS = ("n_layers", "n_heads", "n_kv_heads", "d_head", "d_model")


@dataclass(frozen=True)
class HeadArtifact:
    """One application's saved result.

    Attributes:
        kind: the application's registry name (``steer``, ``fv``, ``safety``, ``inject``, ``kv``, ``prune``).
        model: the model name it was fitted on (applying it elsewhere is refused unless the geometry matches).
        geometry: the model's head geometry (:data:`GEOMETRY_KEYS`), checked when applied.
        heads: the heads the application acts on (or reads), in its order.
        params: the parameters that define the edit (e.g. ``alpha``, ``layer``, ``window``).
        tensors: named tensors (steering directions, function vectors, ...); float32 on the CPU.
        info: anything else worth keeping (fit results, scores, data sizes); JSON-safe.
    """

    kind: str
    model: str
    geometry: Mapping[str, int]
    heads: tuple[HeadId, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The JSON half (without the tensor file's hash)."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "model": self.model,
                "geometry": {k: int(self.geometry[k]) for k in GEOMETRY_KEYS if k in self.geometry},
                "heads": [str(h) for h in self.heads], "params": jsonable(self.params),
                "tensors": sorted(self.tensors), "info": jsonable(self.info)}

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.safetensors`` (atomically: temporary files, then renames)."""
        stem = Path(path)
        if stem.suffix in (".json", ".safetensors"):
            stem = stem.with_suffix("")
        js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        if not stem.parent.exists():
            raise InputError(f"cannot save the {self.kind} artifact: folder {stem.parent} does not exist",
                             "create the folder first or choose another path")
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.tensors.items()}
        if not tensors:  # safetensors needs at least one tensor to write a file some readers accept
            tensors = {"_empty": torch.zeros(0)}
        tmp_st, tmp_js = st.with_name(st.name + ".tmp"), js.with_name(js.name + ".tmp")
        try:
            save_file(tensors, str(tmp_st), metadata={"format": FORMAT, "kind": self.kind})
            doc = self.document() | {"safetensors_sha256": _sha256(tmp_st)}
            tmp_js.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8")
            os.replace(tmp_st, st)
            os.replace(tmp_js, js)
        except OSError as err:
            for tmp in (tmp_st, tmp_js):
                tmp.unlink(missing_ok=True)
            raise InputError(f"cannot save the {self.kind} artifact to {stem}: {err}",
                             "check the path, its permissions and the free disk space") from err
        return js, st

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, kind: str | None = None) -> HeadArtifact:
        """Read an artifact saved by :meth:`save` (give either file or the common stem)."""
        stem = Path(path)
        if stem.suffix in (".json", ".safetensors"):
            stem = stem.with_suffix("")
        js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        hint = "give the path of an artifact saved by a headmine apply command (its .json or .safetensors)"
        for p in (js, st):
            if not p.is_file():
                raise InputError(f"no artifact file {p}", hint)
        try:
            doc = json.loads(js.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{js} is not a headmine artifact (not valid JSON: {err})", hint) from err
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{js} is not a headmine artifact (no format {FORMAT!r})", hint)
        if int(doc.get("version", 0)) > FORMAT_VERSION:
            raise InputError(f"{js} was written by a newer headmine (artifact version {doc['version']})",
                             "upgrade headmine to read it")
        if kind is not None and doc.get("kind") != kind:
            raise InputError(f"{js} is a {doc.get('kind')!r} artifact, not {kind!r}",
                             f"give an artifact saved by `headmine {kind}`")
        if doc.get("safetensors_sha256") != _sha256(st):
            raise InputError(f"{st} does not belong to {js} (its SHA-256 differs from the one the JSON records)",
                             "save the artifact again; keep the two files of one save together")
        try:
            tensors = load_file(str(st))
        except (SafetensorError, OSError) as err:
            raise InputError(f"cannot read the tensors of {st}: {err}", hint) from err
        tensors.pop("_empty", None)
        missing = set(doc.get("tensors", [])) - set(tensors)
        if missing:
            raise InputError(f"{st} lacks the tensors {sorted(missing)} that {js} lists", "save the artifact again")
        try:
            heads = tuple(HeadId.parse(h) for h in doc.get("heads", []))
            return cls(kind=str(doc["kind"]), model=str(doc["model"]), geometry=dict(doc["geometry"]), heads=heads,
                       params=doc.get("params", {}), tensors=tensors, info=doc.get("info", {}))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{js} is damaged: {err}", "save the artifact again") from err

    def check_geometry(self, geometry: Any, model: str) -> None:
        """Refuse to apply this artifact to a model with other head geometry."""
        have = {k: int(getattr(geometry, k)) for k in GEOMETRY_KEYS}
        want = {k: int(v) for k, v in self.geometry.items() if k in have}
        diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
        if diff:
            text = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
            raise InputError(f"the {self.kind} artifact was fitted on {self.model}, whose head geometry differs from "
                             f"{model}'s ({text})", "apply it to the model it was fitted on, or fit it again on this one")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def geometry_of(geometry: Any) -> dict[str, int]:
    """The artifact's geometry record of a :class:`~headmine.models.base.HeadGeometry`."""
    return {k: int(getattr(geometry, k)) for k in GEOMETRY_KEYS}


def head_list(heads: Sequence[HeadId] | Sequence[str]) -> tuple[HeadId, ...]:
    """Heads as HeadIds (strings such as ``L3H5`` are parsed)."""
    return tuple(h if isinstance(h, HeadId) else HeadId.parse(h) for h in heads)
