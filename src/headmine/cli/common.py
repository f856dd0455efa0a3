"""Console, error display and model loading with a spinner, shared by the CLI commands."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from headmine.core.errors import HeadmineError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Print a HeadmineError as a short message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HeadmineError as exc:
            err_console.print(f"[bold red]error:[/] {exc.problem}")
            if exc.hint:
                err_console.print(f"[yellow]what to do:[/] {exc.hint}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/]: nothing half-written was kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def load_with_status(name: str, **kwargs: Any):
    """Load a model, showing a spinner (a GGUF conversion takes ~40 s the first time)."""
    from transformers.utils import logging as hf_logging

    from headmine.models.loading import load_model

    hf_logging.disable_progress_bar()
    with console.status(f"loading {name} (the first load of a GGUF file converts it once, ~1 min)"):
        return load_model(name, **kwargs)


def is_tty() -> bool:
    return sys.stdout.isatty()
