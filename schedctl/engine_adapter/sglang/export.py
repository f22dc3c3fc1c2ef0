"""Follow SGLang's per-request metrics export: the latency stream for the controller and the what-if replay.

SGLang started with ``--export-metrics-to-file --export-metrics-to-file-dir DIR`` appends one JSON object per
finished request to ``DIR/sglang-request-metrics-YYYYMMDD_HH.log`` (a new file every hour;
``srt/observability/request_metrics_exporter.py``). Each object holds the request's ``meta_info``:
``request_received_ts`` (epoch seconds), ``first_token_latency``, ``e2e_latency``, ``queue_time`` (seconds),
``prompt_tokens``, ``cached_tokens``, ``completion_tokens``, ``id``, ...

:class:`RequestExportFollower` reads what was appended since its previous call, file by file in name (= time)
order, and turns each complete line into a :class:`RequestRecord`. A line still being written (no newline yet)
waits for the next call; a line that is not a JSON object, or lacks the arrival time, is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("schedctl.sglang.export")

EXPORT_GLOB = "sglang-request-metrics-*.log"


@dataclass(frozen=True)
class RequestRecord:
    """One finished request as SGLang exported it. Times in seconds; ``received_s`` on the epoch clock."""

    rid: str | None
    received_s: float
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float | None
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None

    @property
    def first_token_s(self) -> float | None:
        return None if self.ttft_s is None else self.received_s + self.ttft_s


def _number(obj: dict[str, Any], key: str) -> float | None:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _count(obj: dict[str, Any], key: str) -> int | None:
    v = _number(obj, key)
    return None if v is None or v < 0 else int(v)


def record_from_json(obj: dict[str, Any]) -> RequestRecord | None:
    received = _number(obj, "request_received_ts")
    if received is None:
        return None
    rid = obj.get("id", obj.get("rid"))
    return RequestRecord(
        rid=rid if isinstance(rid, str) else None,
        received_s=received,
        ttft_s=_number(obj, "first_token_latency"),
        e2e_s=_number(obj, "e2e_latency"),
        queue_s=_number(obj, "queue_time"),
        prompt_tokens=_count(obj, "prompt_tokens"),
        cached_tokens=_count(obj, "cached_tokens"),
        completion_tokens=_count(obj, "completion_tokens"),
    )


class RequestExportFollower:
    """Reads new records from an SGLang export directory; remembers how far it read each file."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes_per_call: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.max_bytes_per_call = max_bytes_per_call
        self._offsets: dict[str, int] = {}
        self.skipped_lines = 0

    def poll(self) -> list[RequestRecord]:
        """Records appended since the previous call (an absent directory gives none)."""
        out: list[RequestRecord] = []
        budget = self.max_bytes_per_call
        try:
            paths = sorted(self.directory.glob(EXPORT_GLOB))
        except OSError as exc:
            logger.warning("cannot list %s: %s", self.directory, exc)
            return out
        for path in paths:
            if budget <= 0:
                break
            budget -= self._read_new(path, out, budget)
        return out

    def _read_new(self, path: Path, out: list[RequestRecord], budget: int) -> int:
        key = str(path)
        offset = self._offsets.get(key, 0)
        try:
            size = path.stat().st_size
            if size < offset:  # truncated or replaced: start over
                offset = 0
            if size == offset:
                return 0
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(min(size - offset, budget))
        except OSError as exc:
            logger.warning("cannot read %s: %s", path, exc)
            return 0
        end = data.rfind(b"\n")
        if end < 0:
            return 0  # no complete line yet
        for raw in data[: end + 1].splitlines():
            if raw.strip():
                self._parse_line(path, raw, out)
        self._offsets[key] = offset + end + 1
        return end + 1

    def _parse_line(self, path: Path, raw: bytes, out: list[RequestRecord]) -> None:
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = None
        record = record_from_json(obj) if isinstance(obj, dict) else None
        if record is None:
            self.skipped_lines += 1
            logger.warning("skipping a request record in %s that is not usable: %.80r", path.name, raw)
            return
        out.append(record)
