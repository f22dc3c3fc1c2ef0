"""The `schedctl` command. Thin: parse, load settings, call a package, print.

Each command group lives in its own module here and exposes ``register(app)``; this file only lists them. A
module whose optional dependencies are missing is skipped (its commands do not appear), never fatal.
"""

from __future__ import annotations

import importlib
import sys

import typer

from schedctl import __version__
from schedctl.cli.common import fail_cleanly

app = typer.Typer(
    name="schedctl", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Adaptive scheduling controller for LLM serving, with an embedded serving simulator.",
)

# command modules, in --help order
COMMAND_MODULES = ("sim", "simserve", "sidecar", "bench", "whatif", "capacity", "plan", "calibrate", "sglang", "load",
                   "trace")


def _print_version(value: bool) -> None:
    if value:
        print(f"schedctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                 callback=_print_version, expose_value=True),
) -> None:
    """Adaptive scheduling controller for LLM serving, with an embedded serving simulator."""


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"schedctl.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name is not None and _exc.name.startswith(f"schedctl.cli.{_name}"):
            continue  # that command group is not written yet
        raise
    _mod.register(app)


def main() -> None:
    sys.exit(fail_cleanly(app))
