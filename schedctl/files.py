"""Reading and writing the files operators hand us, with errors that name the file, the place and the reason.

Every loader in schedctl goes through here, so a bad settings, profile, workload or trace file always stops
with one message of the same shape: ``FILE: FIELD-OR-LINE: REASON``. Writers go through
:func:`atomic_write_text` / :class:`AtomicWriter` so an interrupted run never leaves a half-written file.

This module depends on nothing else in schedctl; every package may use it.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class InputFileError(ValueError):
    """A file we were given cannot be used. ``str(err)`` is the one line to show the operator."""

    def __init__(self, path: str | os.PathLike[str], where: str, reason: str) -> None:
        self.path = str(path)
        self.where = where
        self.reason = reason
        super().__init__(f"{self.path}: {where}: {reason}" if where else f"{self.path}: {reason}")


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validation_message(err: ValidationError) -> tuple[str, str]:
    """(field, reason) of the first error of a pydantic ValidationError, in operator words."""
    first = err.errors()[0]
    field = _loc(tuple(first.get("loc", ())))
    reason = first.get("msg", "invalid value")
    extra = len(err.errors()) - 1
    if extra:
        reason += f" (and {extra} more error{'s' if extra > 1 else ''})"
    return field, reason


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(p, "", "file not found") from None
    except OSError as exc:
        raise InputFileError(p, "", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputFileError(p, "", "not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line L, column C)" in its message; keep it, it is the location.
        raise InputFileError(p, "TOML syntax", str(exc)) from None


def model_from_dict(model: type[M], data: Any, path: str | os.PathLike[str], prefix: str = "") -> M:
    """Validate ``data`` into ``model``; a failure names ``path`` and the offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, reason = validation_message(exc)
        raise InputFileError(path, f"{prefix}{field}" if prefix else field, reason) from None


def load_toml_model(model: type[M], path: str | os.PathLike[str], table: str | None = None) -> M:
    """Load a TOML file (or one top-level table of it) into a pydantic model."""
    data: Any = read_toml(path)
    if table is not None:
        if table not in data:
            known = ", ".join(sorted(data)) or "none"
            raise InputFileError(path, table, f"no such table (the file has: {known})")
        data = data[table]
    return model_from_dict(model, data, path, prefix=f"{table}." if table else "")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises with its number."""
    p = Path(path)
    try:
        fh = p.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(p, "", "file not found") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(p, f"line {lineno}", f"not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputFileError(p, f"line {lineno}", "expected a JSON object")
            yield lineno, obj


class AtomicWriter:
    """Write a file through a temporary sibling and rename it into place on success.

    Used as a context manager; if the body raises, the temporary file is removed and the destination is
    untouched, so an interrupted or failed run never leaves a half-written output behind.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "w") -> None:
        self.path = Path(path)
        self.mode = mode
        self._tmp: str | None = None
        self._fh: IO[Any] | None = None

    def __enter__(self) -> IO[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; an output gets the mode any new file would
        self._fh = os.fdopen(fd, self.mode, encoding=None if "b" in self.mode else "utf-8")
        return self._fh

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._fh is not None and self._tmp is not None
        self._fh.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            os.unlink(self._tmp)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with AtomicWriter(path) as fh:
        fh.write(text)
