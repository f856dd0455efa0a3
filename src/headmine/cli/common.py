"""What the model commands share: the console and error display (``cli.console``, re-exported) and
model loading with a spinner."""

from __future__ import annotations

from typing import Any

from transformers.utils import logging as hf_logging

from headmine.cli.console import console, err_console, friendly_errors, is_tty
from headmine.models.loading import LoadedModel, load_model

__all__ = ["console", "err_console", "friendly_errors", "is_tty", "load_with_status"]


def load_with_status(name: str, **kwargs: Any) -> LoadedModel:
    """Load a model, showing a spinner (a GGUF conversion takes ~40 s the first time)."""
    hf_logging.disable_progress_bar()
    with console.status(f"loading {name} (the first load of a GGUF file converts it once, ~1 min)"):
        return load_model(name, **kwargs)
