"""A name -> object registry, one per extension point (detectors, tasks, causal methods, model families).

Extensions register themselves where they are defined. A registry created with ``plugin_group``
also imports the installed third-party plugins of that entry-point group (``headmine.core.plugins``)
the first time it is looked up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from headmine.core.plugins import load_plugins

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``register`` is usable as a decorator."""

    def __init__(self, kind: str, unknown_error: type[Exception] = KeyError, *, plugin_group: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._unknown_error = unknown_error
        self._plugin_group = plugin_group
        self._plugins_loaded = plugin_group is None

    def _load_plugins(self) -> None:
        if not self._plugins_loaded:
            self._plugins_loaded = True  # first: a plugin's own registration looks the registry up again
            assert self._plugin_group is not None
            load_plugins(self._plugin_group)

    def register(self, *names: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            for name in names:
                if name in self._items and self._items[name] is not obj:
                    raise ValueError(f"{self.kind} {name!r} is already registered")
                self._items[name] = obj
            return obj

        return decorate

    def unregister(self, name: str) -> T:
        """Remove and return ``name`` (tests that register throwaway extensions clean up with it)."""
        try:
            return self._items.pop(name)
        except KeyError:
            raise self._unknown_error(f"unknown {self.kind} {name!r}") from None

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise self._unknown_error(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load_plugins()
        return sorted(self._items.items())
