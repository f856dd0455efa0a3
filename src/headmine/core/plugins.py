"""Third-party extensions through Python entry points.

A package adds a detector, a task, a causal method or a model family by declaring an entry point
in one of the groups below; the entry point names a module (or an object inside one) whose import
registers the extension exactly as headmine's own files do (``register(Detector(...))``,
``@register_adapter``...). Nothing else in headmine changes::

    # the plugin's pyproject.toml
    [project.entry-points."headmine.detectors"]
    my_detector = "my_package.detector"

Each registry loads its group the first time it is looked up, so a plugin is visible to ``scan``,
``heads``, the report and the Python API alike. A plugin that fails to import is reported with the
package and entry point that failed, never swallowed.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import EntryPoint, entry_points

from headmine.core.errors import HeadmineError

GROUPS = ("headmine.detectors", "headmine.tasks", "headmine.methods", "headmine.models", "headmine.applications")
"""The entry-point groups headmine reads, one per extension point."""


class PluginError(HeadmineError):
    """A plugin that could not be loaded."""


def plugin_entry_points(group: str) -> list[EntryPoint]:
    """The installed entry points of ``group``, sorted by name (a stable load order)."""
    if group not in GROUPS:
        raise PluginError(f"unknown plugin group {group!r}", f"use one of {', '.join(GROUPS)}")
    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def load_plugins(group: str) -> list[str]:
    """Import every entry point of ``group`` (importing registers); returns their names."""
    loaded = []
    for ep in plugin_entry_points(group):
        try:
            ep.load()
        except Exception as err:
            dist = getattr(ep.dist, "name", None) or "an installed package"
            raise PluginError(
                f"the headmine plugin {ep.name!r} ({ep.value}) from {dist} failed to load: {type(err).__name__}: {err}",
                f"fix or uninstall {dist}; plugins in group {group} are loaded whenever headmine looks one up",
            ) from err
        loaded.append(ep.name)
    return loaded


def import_submodules(package: str) -> list[str]:
    """Import every module and subpackage of ``package`` (each registers what it defines), sorted by name.

    Built-in extension points use this, so a new detector, task, method or model family inside
    headmine is one new file, with no list of modules to edit.
    """
    root = importlib.import_module(package)
    names = sorted(info.name for info in pkgutil.iter_modules(root.__path__, f"{package}."))
    for name in names:
        importlib.import_module(name)
    return names
