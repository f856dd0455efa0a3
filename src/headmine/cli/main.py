"""The `headmine` command. Each command group lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="headmine",
    help="Attention head mining: detect, causally test and catalogue what every attention head does.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

COMMAND_MODULES = [
    "headmine.cli.mine",
    "headmine.cli.scan",
    "headmine.cli.causal",
    "headmine.cli.gating",
    "headmine.cli.factual",
    "headmine.cli.ioi",
    "headmine.cli.eap",
    "headmine.cli.steer",
    "headmine.cli.fv",
    "headmine.cli.safety",
    "headmine.cli.inject",
    "headmine.cli.kv",
    "headmine.cli.prune",
    "headmine.cli.report",
    "headmine.cli.catalog",
    "headmine.cli.info",
    "headmine.cli.batch",
    "headmine.cli.atlas",
]

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()
