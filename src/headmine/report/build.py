"""``build_report``: atlas -> one self-contained HTML page per model (+ index, + comparison pages).

The output folder is shared with the user: headmine writes only its own files there, records
them in ``.headmine-report.json``, overwrites only files that record lists, and never deletes
anything. A folder that already holds other files (and no such record) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headmine import __version__
from headmine.atlas import utc_now
from headmine.core.errors import InputError
from headmine.report.compare import CompareData, compare_models, compare_runs
from headmine.report.data import ModelData, load_model_data
from headmine.report.labels import STAGE_CODES
from headmine.report.render import render
from headmine.report.runs import open_atlas, require_model

MANIFEST = ".headmine-report.json"


@dataclass
class ReportFiles:
    """What :func:`build_report` wrote: ``index``, ``pages`` (model -> path), ``compare`` paths."""

    out_dir: Path
    index: Path
    pages: dict[str, Path] = field(default_factory=dict)
    compare: list[Path] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def all(self) -> list[Path]:
        return [self.index, *self.pages.values(), *self.compare]


def slug(name: str) -> str:
    """A file-name-safe form of a model name (``org/model`` -> ``org-model``); never empty, no dots first."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    if not s:
        s = "model"
    if s != name:
        s = f"{s}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return s


def _read_manifest(out: Path) -> set[str]:
    p = out / MANIFEST
    if not p.exists():
        return set()
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        files = doc.get("files", [])
        return {str(f) for f in files if isinstance(f, str)}
    except (OSError, ValueError, AttributeError):
        raise InputError(
            f"{p} is not a readable headmine report record",
            "choose a new output folder (headmine will not overwrite files it cannot prove it wrote)",
        ) from None


def prepare_out_dir(out_dir: str | os.PathLike[str], names: Sequence[str]) -> tuple[Path, set[str]]:
    """Check (and create) the output folder; return it and the files headmine wrote there before.

    Raises :class:`InputError` when the folder holds files headmine did not write, when one of
    ``names`` would overwrite such a file, or when the folder cannot be created or written.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"the report output {out} is a file, not a folder", "pass a folder path with --out")
    if out.is_dir():
        owned = _read_manifest(out)
        others = sorted(p.name for p in out.iterdir() if p.name != MANIFEST and p.name not in owned)
        if others and not (out / MANIFEST).exists():
            shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
            raise InputError(
                f"the output folder {out} already holds files headmine did not write ({shown})",
                f"headmine never overwrites or deletes your files: pass a new or empty folder, e.g. --out {out / 'headmine-report'}",
            )
        clash = sorted(n for n in names if (out / n).exists() and n not in owned)
        if clash:
            raise InputError(
                f"the output folder {out} already has {', '.join(clash)}, which headmine did not write",
                "move those files away or pass another --out folder",
            )
    else:
        try:
            out.mkdir(parents=True)
        except OSError as err:
            raise InputError(f"cannot create the report folder {out}: {err.strerror or err}",
                             "choose a writable location for --out") from err
        owned = set()
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"the report folder {out} is not writable", "choose a writable location for --out")
    return out, owned


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _common(atlas_path: Path, generated: str) -> dict[str, Any]:
    return {"atlas_path": str(atlas_path), "generated": generated, "version": __version__,
            "stage_codes": STAGE_CODES}


def render_model_page(data: ModelData, *, links: dict[str, str], common: dict[str, Any]) -> str:
    return render("model.html", d=data, page=data.page_json(), links=links, **common)


def render_compare_page(data: CompareData, *, links: dict[str, str], common: dict[str, Any]) -> str:
    return render("compare.html", c=data, page=data.page_json(), links=links, **common)


def build_report(
    atlas_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    compare: tuple[int, int] | None = None,
    compare_model_names: tuple[str, str] | None = None,
) -> ReportFiles:
    """Write the report for every model in the atlas (or only ``model``) into ``out_dir``.

    ``compare``: two run ids to compare; ``compare_model_names``: two models to compare. Raises
    :class:`~headmine.core.errors.AtlasError` for a missing, foreign or empty atlas or an unknown
    model/run, :class:`~headmine.core.errors.InputError` for an output folder it must not write.
    """
    with open_atlas(atlas_path) as atlas:
        models = atlas.models()
        if model is not None:
            require_model(atlas, model)
            models = [model]
        names = {m: f"{slug(m)}.html" for m in models}
        comparison: CompareData | None = None
        if compare is not None:
            comparison = compare_runs(atlas, int(compare[0]), int(compare[1]))
            cmp_name = f"compare-run{int(compare[0])}-run{int(compare[1])}.html"
        elif compare_model_names is not None:
            comparison = compare_models(atlas, compare_model_names[0], compare_model_names[1])
            cmp_name = f"compare-{slug(compare_model_names[0])}-vs-{slug(compare_model_names[1])}.html"
        all_names = ["index.html", *names.values()] + ([cmp_name] if comparison is not None else [])
        out, owned = prepare_out_dir(out_dir, all_names)
        generated = utc_now()
        common = _common(atlas.path, generated)
        links = {"index": "index.html", **{f"model:{m}": n for m, n in names.items()}}
        if comparison is not None:
            links["compare"] = cmp_name
        result = ReportFiles(out_dir=out, index=out / "index.html")
        summaries = []
        for m in models:
            data = load_model_data(atlas, m)
            _write_atomic(out / names[m], render_model_page(data, links=links, common=common))
            result.pages[m] = out / names[m]
            result.notes[m] = list(data.notes)
            summaries.append({"model": m, "file": names[m], "runs": len(data.runs),
                              "kinds": sorted({r["kind"] for r in data.runs}), "series": len(data.series),
                              "confirmed": data.n_confirmed_heads, "confirmed_types": data.n_confirmed_types,
                              "n_layers": data.n_layers, "n_heads": data.n_heads, "header": data.header})
        if comparison is not None:
            _write_atomic(out / cmp_name, render_compare_page(comparison, links=links, common=common))
            result.compare.append(out / cmp_name)
        _write_atomic(out / "index.html", render("index.html", models=summaries, links=links, page={},
                                                  compare_title=comparison.title if comparison else None, **common))
        record = {"tool": "headmine report", "generated": generated,
                  "files": sorted(owned | set(all_names))}
        _write_atomic(out / MANIFEST, json.dumps(record, indent=1))
    return result
