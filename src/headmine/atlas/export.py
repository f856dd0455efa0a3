"""Export one run's scores or inputs to CSV, Parquet or JSON Lines, written atomically.

Inputs keep their exact token ids: a list column in Parquet and JSONL, a JSON array string in
CSV (``json.loads`` gives the list back). :func:`read_inputs_export` reads any of the three
formats back into :class:`InputRow` objects.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from headmine.atlas.schema import InputRow
from headmine.atlas.store import Atlas
from headmine.core.errors import AtlasError, InputError

WHATS = ("scores", "inputs")
FORMATS = ("csv", "parquet", "jsonl")


def _frame(atlas: Atlas, run_id: int, what: str, fmt: str) -> pd.DataFrame:
    if what == "scores":
        return atlas.scores(run_id=run_id)
    rows = atlas.inputs(run_id)
    data: dict[str, list[Any]] = {
        "run_id": [run_id] * len(rows),
        "idx": [r.idx for r in rows],
        "role": [r.role for r in rows],
        "token_ids": [list(r.token_ids) if fmt != "csv" else json.dumps(list(r.token_ids)) for r in rows],
        "text": [r.text for r in rows],
        "meta": [None if r.meta is None else json.dumps(dict(r.meta), sort_keys=True) for r in rows],
    }
    return pd.DataFrame(data)


def _write(df: pd.DataFrame, fmt: str, path: Path) -> None:
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            for rec in df.to_dict(orient="records"):
                clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
                fh.write(json.dumps(clean, default=_plain, ensure_ascii=False) + "\n")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if obj is pd.NA:
        return None
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def export_run(
    atlas: Atlas,
    run_id: int,
    what: Literal["scores", "inputs"],
    fmt: Literal["csv", "parquet", "jsonl"],
    out_path: str | os.PathLike[str],
) -> Path:
    """Write one run's ``scores`` or ``inputs`` to ``out_path`` as ``csv``, ``parquet`` or ``jsonl``.

    The file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so readers never see a half-written file. Returns the output path.
    """
    if what not in WHATS:
        raise InputError(f"cannot export {what!r}", f"choose one of: {', '.join(WHATS)}")
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    atlas.run(run_id)  # raises AtlasError for an unknown run
    out = Path(out_path).expanduser().absolute()
    if not out.parent.is_dir():
        raise AtlasError(
            f"cannot export to {out}: folder {out.parent} does not exist", "create the folder first"
        )
    df = _frame(atlas, run_id, what, fmt)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; exports are meant to be shared
        _write(df, fmt, Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_inputs_export(path: str | os.PathLike[str]) -> list[InputRow]:
    """Read an inputs export (any format, chosen by suffix) back into :class:`InputRow` objects."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        df = pd.read_csv(p, dtype={"role": str, "text": object, "meta": object}, keep_default_na=False)
        ids = [json.loads(v) for v in df["token_ids"]]
        texts = [None if v == "" else v for v in df["text"]]
        metas = [None if v == "" else json.loads(v) for v in df["meta"]]
    elif suffix == ".parquet":
        df = pd.read_parquet(p)
        ids = [[int(t) for t in v] for v in df["token_ids"]]
        texts = [None if _missing(v) else str(v) for v in df["text"]]
        metas = [None if _missing(v) else json.loads(v) for v in df["meta"]]
    elif suffix == ".jsonl":
        recs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        df = pd.DataFrame({"idx": [r["idx"] for r in recs], "role": [r["role"] for r in recs]})
        ids = [r["token_ids"] for r in recs]
        texts = [r["text"] for r in recs]
        metas = [None if r["meta"] is None else json.loads(r["meta"]) for r in recs]
    else:
        raise InputError(f"cannot tell the format of {p}", "use a .csv, .parquet or .jsonl file")
    return [
        InputRow(idx=int(i), role=str(role), token_ids=tuple(t), text=txt, meta=meta)
        for i, role, t, txt, meta in zip(df["idx"], df["role"], ids, texts, metas, strict=True)
    ]
