"""Azure LLM inference traces (``Azure/AzurePublicDataset``, CC-BY): arrivals and lengths, as schedctl requests.

Format: CSV with the header ``TIMESTAMP,ContextTokens,GeneratedTokens``, one request a row, sorted by time::

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

``TIMESTAMP`` is a wall-clock time (the 2023 traces write 100 ns ticks, seven fractional digits; the 2024 traces
add a UTC offset, ``+00:00``); a request's arrival is its time minus the first row's, in seconds.
``ContextTokens`` is the prompt length, ``GeneratedTokens`` the output length. The trace holds no prefix
structure, so every prompt gets token ids of its own (no two requests share a prefix): the prefix cache only
ever hits on a request's own output in a later turn, which these traces do not have. A row with
``GeneratedTokens`` 0 (the request produced no token) is replayed with one output token: every replayed request
has a first token, and TTFT is what the replay measures.

:func:`read_trace` (``trace.py``) reads this format when the file's first line is this header.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from schedctl.files import InputFileError
from schedctl.workloads.shared_prefix import id_range
from schedctl.workloads.types import Request

HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
AZURE_TOKEN_BASE = 1 << 50  # request i's prompt ids start at base + i * 2**24 (clear of every other id space)
_PROMPT_STRIDE = 1 << 24  # the longest prompt a row may have
_MAX_ROWS = ((1 << 63) - AZURE_TOKEN_BASE) // _PROMPT_STRIDE - 1


def _first_line(path: Path) -> str:
    try:
        with path.open("r", encoding="utf-8-sig") as fh:
            for line in fh:
                if line.strip():
                    return line.strip()
    except FileNotFoundError:
        raise InputFileError(path, "", "file not found") from None
    except UnicodeDecodeError:
        return ""
    return ""


def is_azure(path: str | os.PathLike[str]) -> bool:
    """Whether a trace file is an Azure CSV: its first line is the header (``.csv`` files must be)."""
    p = Path(path)
    first = _first_line(p)
    columns = tuple(c.strip() for c in first.split(","))
    if columns == HEADER:
        return True
    if p.suffix.lower() == ".csv":
        raise InputFileError(p, "line 1", f"a .csv trace must start with the header {','.join(HEADER)} (the Azure "
                             f"LLM inference trace format), got {first[:80]!r}")
    return False


def _int(text: str, name: str, path: Path, where: str, least: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InputFileError(path, where, f"{name} {text.strip()!r} is not an integer") from None
    if value < least:
        raise InputFileError(path, where, f"{name} {value} must be >= {least}")
    return value


def azure_requests(path: str | os.PathLike[str]) -> Iterator[Request]:
    """The requests of an Azure trace, lazily, each row validated (InputFileError names the file and line)."""
    p = Path(path)
    first_ts: datetime | None = None
    last_s = 0.0
    with p.open("r", encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh)
        next(rows, None)  # the header (is_azure checked it)
        request_id = 0
        for row in rows:
            where = f"line {rows.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(HEADER):
                raise InputFileError(p, where, f"expected {len(HEADER)} columns ({','.join(HEADER)}), got {len(row)}")
            try:
                ts = datetime.fromisoformat(row[0].strip())
            except ValueError:
                raise InputFileError(p, where, f"TIMESTAMP {row[0].strip()!r} is not a date and time like "
                                     "2023-11-16 18:15:46.6805900") from None
            context = _int(row[1], "ContextTokens", p, where, 1)
            generated = _int(row[2], "GeneratedTokens", p, where, 0)
            if context > _PROMPT_STRIDE:
                raise InputFileError(p, where, f"ContextTokens {context} is over {_PROMPT_STRIDE}")
            if first_ts is None:
                first_ts = ts
            try:
                arrival_s = (ts - first_ts).total_seconds()
            except TypeError:
                raise InputFileError(p, where, f"TIMESTAMP {row[0].strip()!r} has a time zone and the first row's "
                                     "has none (or the other way round)") from None
            if arrival_s < last_s:
                raise InputFileError(p, where, f"TIMESTAMP {row[0].strip()} is before the previous row's (rows "
                                     "must be sorted by time)")
            if request_id > _MAX_ROWS:
                raise InputFileError(p, where, f"more than {_MAX_ROWS} rows")
            last_s = arrival_s
            prompt = id_range(AZURE_TOKEN_BASE + request_id * _PROMPT_STRIDE, context)
            yield Request(request_id, arrival_s, prompt, max(1, generated))
            request_id += 1
