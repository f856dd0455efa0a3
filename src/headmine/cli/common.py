"""What the model commands share: the console and error display (``cli.console``, re-exported) and
model loading with a spinner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from transformers.utils import logging as hf_logging

from headmine.atlas import Atlas
from headmine.cli.console import console, err_console, friendly_errors, is_tty
from headmine.models.loading import LoadedModel, load_model

__all__ = ["AtlasPath", "Device", "Dtype", "TrustRemoteCode", "check_atlas", "console", "err_console", "friendly_errors", "is_tty", "load_with_status"]

# The options of every command that loads a model (checked by models.placement before the load starts).
Device = Annotated[str, typer.Option(
    "--device", help="cpu | cuda | cuda:N | auto (accelerate spreads the layers over all GPUs, then the CPU)")]
Dtype = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16 (scores still accumulate in float32)")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="run Python code shipped with a hub model (off by default: only for models you trust)")]
# The option of every command that can store its run.
AtlasPath = Annotated[Path | None, typer.Option("--atlas", help="write the run into this atlas (SQLite) file")]


def load_with_status(name: str, **kwargs: Any) -> LoadedModel:
    """Load a model, showing a spinner (a GGUF conversion takes ~40 s the first time)."""
    hf_logging.disable_progress_bar()
    with console.status(f"loading {name} (the first load of a GGUF file converts it once, ~1 min)"):
        return load_model(name, **kwargs)


def check_atlas(atlas: Any) -> None:
    """Before a model loads: fail now if the run could not be written to ``atlas`` later (a long job's
    results are never lost to a bad path), and create nothing (None: no atlas asked for)."""
    if atlas:
        Atlas.check_target(atlas)
