"""How atlas rows are encoded in SQLite: JSON text, token-id blobs, ``.npy`` artifacts, timestamps.

Shared by the writer and the readers so that what one stores the other reads back exactly.
"""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from headmine.core.errors import AtlasError

_INT32 = (-(2**31), 2**31 - 1)


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (what the atlas stores)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """Canonical JSON (sorted keys; numpy, sets, paths and dataclasses converted)."""
    return json.dumps(value, default=_json_default, sort_keys=True, ensure_ascii=False)


def encode_ids(ids: tuple[int, ...]) -> tuple[bytes, str]:
    """Token ids as a little-endian blob and its dtype (int32 when every id fits, else int64)."""
    if all(_INT32[0] <= t <= _INT32[1] for t in ids):
        return np.asarray(ids, dtype="<i4").tobytes(), "<i4"
    return np.asarray(ids, dtype="<i8").tobytes(), "<i8"


def decode_ids(blob: bytes, dtype: str) -> tuple[int, ...]:
    """The token ids :func:`encode_ids` stored."""
    return tuple(np.frombuffer(blob, dtype=dtype).tolist())


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes, without pickle."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def artifact_payload(name: str, value: Any) -> tuple[str, str, bytes | str]:
    """``(name, kind, payload)`` of one artifact: a numpy array as ``npy``, anything else as ``json``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"artifact names must be non-empty strings, got {name!r}")
    if isinstance(value, np.ndarray):
        try:
            return name, "npy", npy_bytes(value)
        except ValueError as err:
            raise AtlasError(
                f"artifact {name!r} is an object array, which cannot be stored without pickle",
                "convert it to a numeric array, or to lists/dicts stored as JSON",
            ) from err
    try:
        return name, "json", dumps(value)
    except (TypeError, ValueError) as err:
        raise AtlasError(
            f"artifact {name!r} is neither a numpy array nor JSON-serialisable ({err})",
            "store numbers, strings, lists and dicts, or a numpy array",
        ) from err


def load_artifact(kind: str, payload: bytes | str) -> Any:
    """What :func:`artifact_payload` stored: ``np.ndarray`` for npy (no pickle), else parsed JSON."""
    if kind == "npy":
        return np.load(io.BytesIO(payload), allow_pickle=False)  # type: ignore[arg-type]
    return json.loads(payload)
