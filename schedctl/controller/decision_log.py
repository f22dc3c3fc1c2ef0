"""The decision log: JSON lines through structlog, one line per tick, flushed and fsynced, rotated by size.

Every line is one complete JSON object: ``{"event": "decision", "timestamp": ..., "tick_id": ..., "decision_id":
..., ...the Decision...}``. A line is written with a single ``write`` of the whole encoded line (newline
included) to a file opened in append mode, then fsynced before the tick ends — so after a crash, a SIGKILL or a
power cut at most the last line can be incomplete: Linux may stop a write to a file part-way when the process
is killed (it checks for fatal signals between pages), and a power cut can lose an unsynced tail.

How a torn line is handled (decided here, relied on by readers):

* the writer repairs at start-up: if the file does not end with a newline, the partial last line is cut off
  (truncated back to the last newline) before anything is appended, so a torn line never sits mid-file;
* readers (:func:`read_decisions`) skip and count a last line that does not end with a newline or does not
  parse; a bad line anywhere else is an error naming the file and line.

Rotation: when the file reaches ``max_bytes`` after a write, ``LOG`` becomes ``LOG.1`` (``LOG.1`` becomes
``LOG.2``, ... up to ``backup_count``; the oldest is deleted) and a new ``LOG`` is started. A rotation happens
only between two complete lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from schedctl.controller.decision import Decision
from schedctl.files import InputFileError


class _FsyncFile:
    """structlog's logger: each message becomes one line, written whole, flushed and fsynced."""

    def __init__(self, log: DecisionLog) -> None:
        self._log = log

    def msg(self, message: str) -> None:
        self._log.write_line(message)

    info = msg


def _timestamp(clock: Callable[[], float]) -> Callable[[Any, str, MutableMapping[str, Any]], Mapping[str, Any]]:
    def add(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        event["timestamp"] = datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds")
        return event

    return add


class DecisionLog:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 10_000_000, backup_count: int = 5,
                 wall_clock: Callable[[], float] | None = None, fsync: bool = True) -> None:
        import time

        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = _repair(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size  # where the last whole line ends
        self.lines_written = 0
        self.write_errors = 0  # lines that could not be written (each cut back to the last whole line)
        self.cut_bytes = 0  # bytes of partial lines cut off after failed writes
        self._torn = False  # a failed write left bytes past _size that are not cut yet
        self._logger = structlog.wrap_logger(
            _FsyncFile(self),
            processors=[_timestamp(wall_clock or time.time), structlog.processors.JSONRenderer(sort_keys=False)],
        )

    def write(self, decision: Decision) -> None:
        """Append the decision as one line (raises OSError when the disk refuses)."""
        self._logger.info("decision", **json.loads(decision.model_dump_json()))  # NaN -> null: strict JSON

    def write_line(self, text: str) -> None:
        """Append one whole line, or nothing: a write that fails part-way (full disk, file-size limit) is cut
        back to the last whole line, counted in ``write_errors``, and the OSError raised; the next line is
        written normally, so logging resumes by itself when space returns."""
        data = (text + "\n").encode("utf-8")
        if self._torn:
            self._truncate_back()  # a cut that failed last time: the file must end on a whole line first
        view = memoryview(data)
        try:
            while view:  # a short write (signal, full disk) continues or raises; the line is never split by us
                n = os.write(self._fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            self.write_errors += 1
            self._torn = True
            self._truncate_back()
            raise
        self._size += len(data)
        self.lines_written += 1
        if self.max_bytes and self._size >= self.max_bytes:
            self._rotate()

    def _truncate_back(self) -> None:
        """Cut the file back to the end of the last whole line (a failure is retried before the next write)."""
        try:
            end = os.fstat(self._fd).st_size
            if end > self._size:
                os.ftruncate(self._fd, self._size)
                self.cut_bytes += end - self._size
            self._torn = False
        except OSError:
            pass

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.backup_count > 0:
            for i in range(self.backup_count - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _repair(path: Path) -> int:
    """Cut a partial last line (no final newline) off an existing log; returns the bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        keep = 0
        pos = size
        while pos > 0:  # scan back for the last newline
            step = min(65536, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = pos - step + idx + 1
                break
            pos -= step
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The log and its rotated siblings, oldest first (LOG.N, ..., LOG.1, LOG)."""
    p = Path(path)
    rotated = []
    for sib in p.parent.glob(f"{p.name}.*"):
        suffix = sib.name[len(p.name) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), sib))
    return [s for _n, s in sorted(rotated, reverse=True)] + ([p] if p.exists() else [])


def read_decisions(path: str | os.PathLike[str], rotated: bool = True) -> tuple[list[Decision], int]:
    """Every decision in the log (and its rotated files), in file order, and the number of torn lines skipped."""
    files = log_files(path) if rotated else [Path(path)]
    if not files:
        raise InputFileError(path, "", "file not found")
    out: list[Decision] = []
    torn = 0
    for file in files:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise InputFileError(file, "", f"cannot read: {exc.strerror}") from None
        lines = raw.split(b"\n")
        last_complete = len(lines) - 1  # the element after the final newline ('' when the file ends with one)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                out.append(Decision.model_validate({k: v for k, v in obj.items() if k not in ("event", "timestamp")}))
            except (ValueError, ValidationError) as exc:
                if i == last_complete:
                    torn += 1  # a partial last line (killed mid-write): skipped
                    continue
                reason = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else f"not a decision ({exc})"
                raise InputFileError(file, f"line {i + 1}", reason.splitlines()[0]) from None
            if i == last_complete:  # parsed, but no newline: the writer had not finished the line
                out.pop()
                torn += 1
    return out, torn
