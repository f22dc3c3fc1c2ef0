"""Stand-ins for the two imports SGLang 0.5.23 makes on a CPU-only machine (README.md beside this file).

Each shim lives in a root folder of its own (``sgl_kernel_root/``, ``torchvision_root/``) so that
:func:`pythonpath_for_missing` can put on ``PYTHONPATH`` exactly the shims whose real package is missing: a machine
with the real torchvision or sgl_kernel keeps it. Only ``schedctl sglang serve --cpu`` and the tests that import
SGLang's scheduler code use them; nothing on a GPU host loads them.
"""

from __future__ import annotations

import importlib.machinery
import sys
from collections.abc import Callable
from pathlib import Path

SHIM_ROOTS = {name: Path(__file__).parent / f"{name}_root" for name in ("sgl_kernel", "torchvision")}


def unavailable(module: str, name: str) -> Callable[..., object]:
    """A function standing for ``module.name`` that raises when called: the CPU server must never reach it."""

    def _raise(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError(
            f"{module}.{name} is a stand-in (schedctl/engine_adapter/sglang/cpu_shims): the real package is not "
            f"installed on this CPU machine, and SGLang reached code that needs it"
        )

    _raise.__name__ = name
    return _raise


def missing_modules() -> list[str]:
    """The shimmed modules that this Python cannot import for real (a shim already on sys.path does not count)."""
    shims = Path(__file__).parent.resolve()
    paths = [p for p in sys.path if not Path(p or ".").resolve().is_relative_to(shims)]
    return [name for name in SHIM_ROOTS if importlib.machinery.PathFinder.find_spec(name, paths) is None]


def pythonpath_for_missing() -> list[str]:
    """The shim roots to put on PYTHONPATH: one per module that is not installed for real."""
    return [str(SHIM_ROOTS[name]) for name in missing_modules()]
