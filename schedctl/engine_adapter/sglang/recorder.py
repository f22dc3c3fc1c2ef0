"""Record what an SGLang server receives as a Mooncake-format trace, privately (off by default).

Each request becomes one line, as in Mooncake's FAST'25 traces (``workloads/mooncake.py`` reads them back)::

    {"timestamp": 1532, "input_length": 1100, "output_length": 64, "hash_ids": [0, 1, 7]}

* ``hash_ids``: the prompt's token ids cut into 512-token blocks (the last one shorter); block j's hash is a
  BLAKE2b digest of block j-1's hash and block j's ids, so it depends on every block before it: two prompts
  have equal hashes up to block j exactly when their first j blocks are equal. Each distinct hash is written as
  a small integer, numbered in order of first appearance (as Mooncake does). Neither the token ids, nor the text,
  nor the digests are written: the file says which requests share which prefix blocks, and nothing more.
* ``timestamp``: milliseconds since the first recorded request (when the scheduler took it in).
* ``input_length``: prompt tokens; ``output_length``: the request's ``max_new_tokens`` (what was asked for; a
  request that stops early at EOS generated fewer).

Switched on by the environment of the server (``schedctl sglang serve --record-trace FILE`` sets it):
``SCHEDCTL_RECORD_TRACE=FILE`` and optionally ``SCHEDCTL_RECORD_TRACE_MAX_BYTES`` (default 100 MB). At the cap the
recorder stops writing and says so once in the server's log. It refuses to overwrite an existing file (a
restarted server would restart the clock). Only one scheduler process writes: tensor-parallel rank 0 of pipeline
stage 0 (every rank sees the same requests). SGLang's own ``/health`` probe requests are left out; its start-up
warm-up request is a ``/generate`` like any other and is recorded. Any error stops the recording with one log
line; the server goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from schedctl.workloads.mooncake import BLOCK_TOKENS

logger = logging.getLogger("schedctl.sglang.recorder")

TRACE_ENV = "SCHEDCTL_RECORD_TRACE"
MAX_BYTES_ENV = "SCHEDCTL_RECORD_TRACE_MAX_BYTES"
DEFAULT_MAX_BYTES = 100_000_000
TARGET_HANDLE_GENERATE = "sglang.srt.managers.scheduler.Scheduler.handle_generate_request"
HEALTH_CHECK_RID_PREFIX = "HEALTH_CHECK"  # SGLang's /health probes (srt/constants.py): not the operator's traffic


class BlockHasher:
    """Chained 512-token block hashes of prompts, as small integers numbered in order of first appearance."""

    def __init__(self, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block_tokens = block_tokens
        self._ids: dict[bytes, int] = {}

    def hash_ids(self, token_ids: Sequence[int]) -> list[int]:
        ids = token_ids if isinstance(token_ids, array) and token_ids.typecode == "q" else array("q", token_ids)
        prev = b""
        out = []
        for start in range(0, len(ids), self.block_tokens):
            prev = hashlib.blake2b(prev + ids[start:start + self.block_tokens].tobytes(), digest_size=16).digest()
            out.append(self._ids.setdefault(prev, len(self._ids)))
        return out


class TraceRecorder:
    """Writes one Mooncake line per request to ``path`` until ``max_bytes``; the clock is injectable."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.clock = clock
        self.hasher = BlockHasher()
        self.written_bytes = 0
        self.requests = 0
        self.stopped: str | None = None  # why recording stopped (None: recording)
        self._start_s: float | None = None
        self._fh: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._fh is None:
            self._fh = self.path.open("x", encoding="utf-8")  # never overwrite: FileExistsError stops recording
        return self._fh

    def record(self, token_ids: Sequence[int], max_new_tokens: int | None) -> bool:
        """Record one request; False once stopped (the cap, or an error, logged once)."""
        if self.stopped is not None or not token_ids:
            return False
        try:
            now = self.clock()
            if self._start_s is None:
                self._start_s = now
            line = json.dumps({
                "timestamp": round((now - self._start_s) * 1000.0), "input_length": len(token_ids),
                "output_length": max(1, int(max_new_tokens or 1)), "hash_ids": self.hasher.hash_ids(token_ids),
            }, separators=(", ", ": ")) + "\n"
            size = len(line.encode())
            if self.written_bytes + size > self.max_bytes:
                self._stop(f"the size cap of {self.max_bytes} bytes ({MAX_BYTES_ENV}) was reached after "
                           f"{self.requests} requests; later requests are not recorded")
                return False
            fh = self._open()
            fh.write(line)
            fh.flush()
            self.written_bytes += size
            self.requests += 1
            return True
        except Exception as exc:  # the server must go on whatever happens here
            self._stop(f"{type(exc).__name__}: {exc}")
            return False

    def _stop(self, why: str) -> None:
        self.stopped = why
        logger.warning("schedctl trace recording to %s stopped: %s", self.path, why)
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None


def recorder_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> TraceRecorder | None:
    """The recorder the environment asks for (None: recording off); a bad cap value is logged and recording stays
    off rather than failing the server."""
    path = environ.get(TRACE_ENV, "").strip()
    if not path:
        return None
    text = environ.get(MAX_BYTES_ENV, "").strip()
    try:
        max_bytes = int(text) if text else DEFAULT_MAX_BYTES
        if max_bytes < 1:
            raise ValueError("must be >= 1")
    except ValueError as exc:
        logger.warning("schedctl trace recording off: %s=%r is not a byte count (%s)", MAX_BYTES_ENV, text, exc)
        return None
    return TraceRecorder(path, max_bytes)


RECORDER: TraceRecorder | None = None


def _writer_rank() -> bool:
    """Whether this scheduler process writes the trace (tensor-parallel rank 0 of pipeline stage 0)."""
    try:
        from sglang.srt.runtime_context import get_parallel

        par = get_parallel()
        return getattr(par, "tp_rank", 0) == 0 and getattr(par, "pp_rank", 0) == 0
    except Exception:
        return True


def record_hook(scheduler: Any, recv_req: Any, *a: Any, **kw: Any) -> None:
    """BEFORE hook on ``Scheduler.handle_generate_request`` (SGLang 0.5.23, ``srt/managers/scheduler.py``): the
    request as the scheduler receives it, tokenized (``input_ids``, ``sampling_params.max_new_tokens``)."""
    rec = RECORDER
    if rec is None or rec.stopped is not None:
        return None
    try:
        if getattr(scheduler, "_schedctl_writes_trace", None) is None:
            scheduler._schedctl_writes_trace = _writer_rank()
        rid = getattr(recv_req, "rid", None)
        probe = isinstance(rid, str) and rid.startswith(HEALTH_CHECK_RID_PREFIX)
        if scheduler._schedctl_writes_trace and not probe:
            ids = getattr(recv_req, "input_ids", None)
            if ids:
                rec.record(ids, getattr(getattr(recv_req, "sampling_params", None), "max_new_tokens", None))
    except Exception as exc:
        rec._stop(f"{type(exc).__name__}: {exc}")
    return None


def register(registry: Any, before: Any) -> bool:
    """Register the hook when the environment switches recording on (called by ``plugin.register``)."""
    global RECORDER
    RECORDER = recorder_from_env()
    if RECORDER is None:
        return False
    registry.register(TARGET_HANDLE_GENERATE, record_hook, before)
    logger.info("schedctl records the requests this server receives to %s (Mooncake format, block hashes only, "
                "cap %d bytes)", RECORDER.path, RECORDER.max_bytes)
    return True
