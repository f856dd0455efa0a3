"""The model-family lookups: every built-in adapter is imported here, so each registers itself by
``config.model_type`` before ``adapter_for`` or ``supported_families`` reads the registry.

``models/base.py`` holds the registry and the adapter base class and imports no family, so the
family files can import it without a cycle; this module sits above both.
"""

from __future__ import annotations

from torch import nn

from headmine.core.errors import UnsupportedModelError
from headmine.core.plugins import import_submodules
from headmine.models.base import ADAPTERS, ModelAdapter


def supported_families() -> list[str]:
    """``config.model_type`` values with a registered adapter (built-ins and plugins)."""
    return ADAPTERS.names()


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``, chosen by ``config.model_type``."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"no headmine adapter for model family {model_type!r}; supported: {', '.join(supported_families())}",
            "add one: copy src/headmine/models/llama.py (separate q/k/v projections, RMSNorm) or gpt2.py "
            "(fused, Conv1D, LayerNorm), set the module paths, the norm conventions (norm_kind, norm_eps_attr, "
            "attn_norm_name, ...) and `families = (\"" + model_type + "\",)` in a new file under "
            "src/headmine/models/ (or a plugin package); the conformance suite in tests/adapters then checks it",
        )
    return ADAPTERS.get(model_type)(model)


BUILTIN_MODULES = import_submodules("headmine.models")
"""Every module of ``headmine.models``: each family file registers its adapter when imported (last, so
the modules that import this one find its functions defined)."""
