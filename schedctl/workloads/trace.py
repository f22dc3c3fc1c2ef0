"""JSONL request traces: write any workload to a file, replay it later.

One request per line, sorted by arrival time::

    {"request_id": 0, "arrival_s": 0.0131, "prompt": [[16777216, 2048], [16908288, 128]], "output_len": 256,
     "group_id": 3}

Fields (:class:`TraceLine`): request_id (unique, >= 0), arrival_s (>= 0, non-decreasing down the file), prompt
(token ids, non-empty), output_len (>= 1); optional output_tokens (exactly output_len ids), session_id, group_id,
slo_class ("default" when absent). A token-id list holds ids and runs: an item is either one id or a pair
``[first_id, count]`` standing for the ``count`` consecutive ids from ``first_id`` — synthetic prompts are a few
runs, so a million-request trace stays small; real tokenizer ids are written one by one.

Reading is lazy and validates every line: a bad line raises InputFileError with the file, the line number and the
reason. A file whose first line has ``hash_ids`` is a Mooncake trace (``mooncake.py``); a file whose first line is
the header ``TIMESTAMP,ContextTokens,GeneratedTokens`` is an Azure LLM inference trace (``azure.py``). Writing is
atomic: a failed write leaves no file behind. :func:`time_scaled` replays a trace at another load.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from array import array
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schedctl.files import AtomicWriter, InputFileError, iter_jsonl, model_from_dict
from schedctl.tokens import TokenArray
from schedctl.workloads.azure import azure_requests, is_azure
from schedctl.workloads.mooncake import is_mooncake, mooncake_requests
from schedctl.workloads.shared_prefix import id_range
from schedctl.workloads.types import Request

TokenItem = Annotated[int, Field(ge=0)] | tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]]
_MIN_RUN = 4  # shorter runs of consecutive ids are written id by id


class TraceLine(BaseModel):
    """One line of a trace file."""

    model_config = ConfigDict(extra="forbid")
    request_id: int = Field(ge=0)
    arrival_s: float = Field(ge=0, allow_inf_nan=False)
    prompt: list[TokenItem] = Field(min_length=1)
    output_len: int = Field(ge=1)
    output_tokens: list[TokenItem] | None = None
    session_id: int | None = None
    group_id: int | None = None
    slo_class: str = Field("default", min_length=1)


def encode_tokens(ids: TokenArray) -> list[int | list[int]]:
    """Token ids as trace items: runs of >= 4 consecutive ids become [first_id, count]."""
    if not ids:
        return []
    arr = np.frombuffer(ids, dtype=np.int64) if isinstance(ids, array) else np.asarray(ids, dtype=np.int64)
    breaks = (np.flatnonzero(np.diff(arr) != 1) + 1).tolist()
    out: list[int | list[int]] = []
    for start, end in itertools.pairwise([0, *breaks, len(ids)]):
        if end - start >= _MIN_RUN:
            out.append([ids[start], end - start])
        else:
            out.extend(ids[start:end])
    return out


def decode_tokens(items: list[int | tuple[int, int]]) -> TokenArray:
    """Trace items (ids and [first_id, count] runs) as an int64 array."""
    out = array("q")
    singles: list[int] = []
    for item in items:
        if isinstance(item, int):
            singles.append(item)
            continue
        if singles:
            out.extend(singles)
            singles = []
        out += id_range(*item)
    out.extend(singles)
    return out


def _line(req: Request) -> str:
    obj: dict[str, object] = {
        "request_id": req.request_id,
        "arrival_s": req.arrival_s,
        "prompt": encode_tokens(req.prompt),
        "output_len": req.output_len,
    }
    if req.output_tokens is not None:
        obj["output_tokens"] = encode_tokens(req.output_tokens)
    if req.session_id is not None:
        obj["session_id"] = req.session_id
    if req.group_id is not None:
        obj["group_id"] = req.group_id
    if req.slo_class != "default":
        obj["slo_class"] = req.slo_class
    return json.dumps(obj, separators=(",", ":"))


def write_trace(path: str | os.PathLike[str], requests: Iterable[Request]) -> int:
    """Write requests (sorted by arrival, ids unique) to a JSONL trace atomically; returns the number written."""
    count = 0
    last_s = 0.0
    with AtomicWriter(path) as fh:
        for req in requests:
            if req.arrival_s < last_s:
                raise ValueError(f"request {req.request_id}: arrival_s {req.arrival_s} is before the previous "
                                 f"request's {last_s}; a trace must be sorted by arrival time")
            last_s = req.arrival_s
            fh.write(_line(req))
            fh.write("\n")
            count += 1
    return count


def read_trace(path: str | os.PathLike[str]) -> Iterator[Request]:
    """The requests of a JSONL trace, lazily, validating each line (InputFileError names the file and line).

    A file whose first line carries ``hash_ids`` is read as a Mooncake trace (``mooncake.py``), one whose first line
    is ``TIMESTAMP,ContextTokens,GeneratedTokens`` (or any ``.csv``) as an Azure trace (``azure.py``).
    """
    if is_azure(path):
        yield from azure_requests(path)
        return
    lines = iter_jsonl(path)
    first = next(lines, None)
    if first is None:
        return
    rest = itertools.chain([first], lines)
    if is_mooncake(first[1]):
        yield from mooncake_requests(path, rest)
        return
    yield from _read_schedctl(path, rest)


def _read_schedctl(path: str | os.PathLike[str], lines: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[Request]:
    seen_ids: set[int] = set()
    last_s = 0.0
    for lineno, obj in lines:
        where = f"line {lineno}"
        line = model_from_dict(TraceLine, obj, path, prefix=f"{where}: ")
        if line.arrival_s < last_s:
            raise InputFileError(path, where, f"arrival_s {line.arrival_s} is before the previous line's {last_s} "
                                 "(lines must be sorted by arrival time)")
        if line.request_id in seen_ids:
            raise InputFileError(path, where, f"request_id {line.request_id} appears twice")
        seen_ids.add(line.request_id)
        last_s = line.arrival_s
        output_tokens = None if line.output_tokens is None else decode_tokens(line.output_tokens)
        try:
            req = Request(line.request_id, line.arrival_s, decode_tokens(line.prompt), line.output_len,
                          output_tokens, line.session_id, line.group_id, line.slo_class)
        except ValueError as exc:
            raise InputFileError(path, where, str(exc)) from None
        yield req


def time_scaled(requests: Iterable[Request], time_scale: float) -> Iterator[Request]:
    """The requests with every arrival time multiplied by ``time_scale`` (lazily).

    ``time_scale`` < 1 compresses the gaps between arrivals: 0.5 replays a trace twice as fast, at twice the load;
    2 at half the load. The requests, their order and their lengths are unchanged."""
    if not (time_scale > 0 and np.isfinite(time_scale)):
        raise ValueError(f"time_scale must be a number > 0, got {time_scale}")
    for req in requests:
        yield req if time_scale == 1.0 else dataclasses.replace(req, arrival_s=req.arrival_s * time_scale)
