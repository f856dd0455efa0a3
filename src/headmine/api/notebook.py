"""Errors in a notebook: a :class:`~headmine.core.errors.HeadmineError` shows as one short message
(what was wrong, what to do), as in the CLI, instead of a wall of traceback.

:func:`install_error_display` registers an IPython custom exception handler for headmine's errors
only; every other exception keeps IPython's normal traceback. It does nothing outside IPython. The
API calls it when ``headmine.api`` is imported; ``HEADMINE_TRACEBACK=1`` keeps full tracebacks.
"""

from __future__ import annotations

import html
import os
import sys
from typing import Any

from headmine.core.errors import HeadmineError


def error_text(err: HeadmineError) -> str:
    """The message a notebook shows: the error's kind, its problem and, when there is one, the hint."""
    text = f"{type(err).__name__}: {err.problem}"
    return text + (f"\nWhat to do: {err.hint}" if err.hint else "")


class ErrorDisplay:
    """What the notebook shows for a headmine error (text and HTML forms)."""

    def __init__(self, err: HeadmineError) -> None:
        self.err = err

    def __repr__(self) -> str:
        return error_text(self.err)

    def _repr_html_(self) -> str:
        problem = html.escape(f"{type(self.err).__name__}: {self.err.problem}")
        hint = f"<div><b>What to do:</b> {html.escape(self.err.hint)}</div>" if self.err.hint else ""
        return (f"<div class='headmine-error' style='border-left:4px solid #d62728;padding:4px 8px;"
                f"background:#fff5f5'><b>{problem}</b>{hint}</div>")


def _handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    if isinstance(value, HeadmineError):
        shell.display_pub.publish({"text/plain": repr(ErrorDisplay(value)), "text/html": ErrorDisplay(value)._repr_html_()})
        return None
    return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def install_error_display() -> bool:
    """Register the short display for headmine errors in a running IPython; True when installed."""
    if os.environ.get("HEADMINE_TRACEBACK") or "IPython" not in sys.modules:
        return False
    from IPython import get_ipython  # optional: only when IPython is running

    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((HeadmineError,), _handler)
    return True
