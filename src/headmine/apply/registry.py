"""The application registry, and :func:`applied`: apply a saved artifact to every forward pass (``generate`` included).

An application is one file in :mod:`headmine.apply` that defines an :class:`Application` and
registers it with :func:`register_application`; :mod:`headmine.apply` imports every module of the
package, so a new application is one file. Third-party packages add applications through the
``headmine.applications`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from headmine import catalog
from headmine.apply.artifact import HeadArtifact
from headmine.core.errors import InputError
from headmine.core.registry import Registry


class Application(ABC):
    """One way of putting heads to work: fitted by its module's ``fit``/``run`` function, saved as a
    :class:`HeadArtifact`, and applied during generation by :meth:`apply`."""

    name: str = ""
    """Registry name, CLI verb (``headmine <name>``) and the ``kind`` of its atlas runs and artifacts."""
    title: str = ""
    """What the report calls it, e.g. "Inference-time intervention (truthfulness steering)"."""
    paper: str = ""
    """The paper it follows, e.g. "Li et al. 2023 (ITI)"."""
    head_types: tuple[str, ...] = ()
    """Survey head types whose heads it finds and uses (e.g. "Truthfulness Head"): registered as catalog
    links of kind ``application``, so `headmine catalog` names the verb that finds them."""

    @abstractmethod
    def apply(self, lm: Any, artifact: HeadArtifact) -> AbstractContextManager[None]:
        """A context manager under which every forward pass of ``lm`` carries the artifact's edit."""


APPLICATIONS: Registry[Application] = Registry("application", InputError, plugin_group="headmine.applications")


def register_application(app: Application) -> Application:
    """Register ``app`` under its name (use at module level, where the application is defined)."""
    if not app.name:
        raise ValueError("an application needs a name")
    APPLICATIONS.register(app.name)(app)
    for head_type in app.head_types:
        if not catalog.register_link(head_type, catalog.DetectorLink(
                detector=app.name, task=app.name, kind="application", note=f"`headmine {app.name}`: {app.title}")):
            raise ValueError(f"application {app.name}: {head_type!r} is not a survey head type")
    return app


def get_application(name: str) -> Application:
    return APPLICATIONS.get(name)


@contextmanager
def applied(lm: Any, artifact: HeadArtifact) -> Iterator[None]:
    """Apply ``artifact`` to every forward pass of ``lm`` inside the block (``lm.model.generate`` included).

    The artifact's head geometry must match the model's; hooks are removed on exit, also on error.
    """
    app = get_application(artifact.kind)
    artifact.check_geometry(lm.geometry, lm.name)
    with app.apply(lm, artifact):
        yield
