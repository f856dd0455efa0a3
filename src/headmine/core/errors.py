"""Errors a user can act on: each says what was wrong and what to do about it."""

from __future__ import annotations


class HeadmineError(Exception):
    """Base class. ``str(err)`` is the problem; ``err.hint`` says what to do."""

    def __init__(self, problem: str, hint: str | None = None) -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(problem if hint is None else f"{problem}\n  What to do: {hint}")


class ModelLoadError(HeadmineError):
    """A model name, folder or file could not be turned into a model."""


class UnsupportedModelError(HeadmineError):
    """The model family has no adapter."""


class HeadIndexError(HeadmineError, IndexError):
    """A layer or head index outside the model's geometry."""


class InputError(HeadmineError, ValueError):
    """Bad user input: prompts, datasets, options."""


class CaptureError(HeadmineError):
    """A capture request that cannot be served."""


class TaskError(HeadmineError, ValueError):
    """A task or dataset that cannot be built for this tokenizer."""


class NumericalError(HeadmineError):
    """NaN or inf in a model's weights or activations; the message names where they first appear."""


class AtlasError(HeadmineError):
    """The atlas database is missing, foreign, too new, or not writable."""


class DetectorError(HeadmineError, KeyError):
    """Unknown detector or detector misuse."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)
