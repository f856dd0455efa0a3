"""The CLI's consoles and error display. Torch-free, so `headmine report` starts without loading torch."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

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

    return cast(F, wrapper)


def is_tty() -> bool:
    return sys.stdout.isatty()
