"""HTML rendering: jinja2 with autoescape, data embedded as escaped JSON, CSS/JS inlined.

Every string from the atlas reaches the page either through jinja2's autoescape (HTML text and
attributes) or through :func:`script_json` (a ``<script type="application/json">`` block whose
``<``, ``>``, ``&``, U+2028 and U+2029 are written as ``\\uXXXX`` escapes); the page's script
puts data into the DOM with ``textContent`` only, never ``innerHTML``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _no_nan(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def script_json(value: Any) -> Markup:
    """JSON that is safe inside a ``<script>`` element (no ``</script>``, ``<!--``, line separators)."""
    text = json.dumps(_no_nan(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in _JSON_ESCAPES.items():
        text = text.replace(ch, esc)
    return Markup(text)


SCRIPTS = ("core.js", "heatmap.js", "head.js", "report.js")
"""The page's script files, inlined in this order into one ``<script>``."""


def _static(name: str) -> str:
    return resources.files("headmine.report").joinpath("static", name).read_text(encoding="utf-8")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return "–"
        if v == int(v) and abs(v) < 1e9 and isinstance(value, int):
            return str(int(v))
        return f"{v:.{digits}g}"
    return str(value)


def _rho_color(value: Any) -> str:
    """Background for a correlation cell: red for +1, blue for -1 (numbers only, never atlas text)."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "background:#f3f3f3"
    v = max(-1.0, min(1.0, float(value)))
    alpha = round(abs(v) * 0.85, 3)
    rgb = "214,39,40" if v > 0 else "31,119,180"
    return f"background:rgba({rgb},{alpha})"


def _overlap_color(value: Any, k: Any, weak: Any = False) -> str:
    """Background for an agreement cell: darker green for a larger share of shared top-k heads; grey
    when the cell rests on too few heads (numbers only, never atlas text)."""
    if weak or not isinstance(value, (int, float)) or not isinstance(k, (int, float)) or k <= 0:
        return "background:#eceff1;color:#6b7680"
    share = max(0.0, min(1.0, float(value) / float(k)))
    return f"background:rgba(26,127,55,{round(0.08 + share * 0.62, 3)})" + (";color:#fff" if share > 0.6 else "")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("headmine.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["script_json"] = script_json
    env.filters["fmt"] = _fmt
    env.filters["rho_color"] = _rho_color
    env.filters["overlap_color"] = _overlap_color
    env.globals["inline_css"] = lambda: Markup(_static("report.css"))
    # the script is our own file; "</" cannot appear in it (checked by the tests)
    env.globals["inline_js"] = lambda: Markup(page_script())
    env.globals["script_csp"] = lambda: Markup(script_source_hash())
    return env


@lru_cache(maxsize=1)
def page_script() -> str:
    """The page's one script: :data:`SCRIPTS` inlined in order."""
    return "\n".join(_static(name) for name in SCRIPTS)


@lru_cache(maxsize=1)
def script_source_hash() -> str:
    """The CSP source that allows exactly :func:`page_script` (``'sha256-...'``): any other inline
    script, e.g. one smuggled in by a string that escaped escaping, is refused by the browser."""
    digest = hashlib.sha256(page_script().encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def render(template: str, **context: Any) -> str:
    """Render one of the package's templates to a complete HTML document."""
    return environment().get_template(template).render(**context)
