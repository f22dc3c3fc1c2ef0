"""Mooncake FAST'25 traces: arrival times, lengths and chained prefix-block hashes, as schedctl requests.

Format (``kvcache-ai/Mooncake``, ``FAST25-release/traces/``, Apache-2.0), one JSON object a line::

    {"timestamp": 14514, "input_length": 30397, "output_length": 2, "hash_ids": [1145, 1146, ..., 1341]}

``timestamp`` is the arrival in milliseconds; ``hash_ids`` are the (remapped) hashes of the prompt's 512-token
blocks, chained, so two requests with equal ids up to block j share their first j blocks; there are
ceil(input_length / 512) of them. Each id becomes its own run of 512 token ids (``MOONCAKE_TOKEN_BASE + id * 512``
onwards), the last block cut to the prompt's length: equal ids share a prefix in the radix cache, different ids
share nothing. No text or token ids of the original traffic exist in the file, and none are made up beyond that.

:func:`read_trace` (``trace.py``) reads this format when a file's first line has ``hash_ids``.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from schedctl.files import InputFileError, model_from_dict
from schedctl.tokens import TokenArray
from schedctl.workloads.shared_prefix import id_range
from schedctl.workloads.types import Request

BLOCK_TOKENS = 512  # Mooncake's prefix-block size
MOONCAKE_TOKEN_BASE = 1 << 40  # block ids become token ids from here on (clear of schedctl's synthetic ids)
MAX_HASH_ID = 1 << 40  # keeps every token id inside int64


class MooncakeLine(BaseModel):
    """One line of a Mooncake trace."""

    model_config = ConfigDict(extra="ignore")
    timestamp: float = Field(ge=0, allow_inf_nan=False, description="arrival, milliseconds")
    input_length: int = Field(ge=1)
    output_length: int = Field(ge=1)
    hash_ids: list[Annotated[int, Field(ge=0, le=MAX_HASH_ID)]] = Field(min_length=1)


def is_mooncake(obj: dict[str, Any]) -> bool:
    """Whether a trace line is in Mooncake's format (it carries block hashes)."""
    return "hash_ids" in obj


def prompt_of(hash_ids: list[int], input_length: int) -> TokenArray:
    """The token ids of a prompt made of these 512-token blocks, the last one cut to ``input_length``."""
    out = array("q")
    for j, h in enumerate(hash_ids):
        out += id_range(MOONCAKE_TOKEN_BASE + h * BLOCK_TOKENS, min(BLOCK_TOKENS, input_length - j * BLOCK_TOKENS))
    return out


def mooncake_requests(path: str | os.PathLike[str], lines: Iterable[tuple[int, dict[str, Any]]]) -> Iterator[Request]:
    """Requests from Mooncake lines (line number, object), validated one by one (errors name file and line)."""
    last_ms = 0.0
    for request_id, (lineno, obj) in enumerate(lines):
        where = f"line {lineno}"
        line = model_from_dict(MooncakeLine, obj, path, prefix=f"{where}: ")
        blocks = math.ceil(line.input_length / BLOCK_TOKENS)
        if len(line.hash_ids) != blocks:
            raise InputFileError(path, where, f"hash_ids has {len(line.hash_ids)} blocks; input_length "
                                 f"{line.input_length} needs {blocks} of {BLOCK_TOKENS} tokens")
        if line.timestamp < last_ms:
            raise InputFileError(path, where, f"timestamp {line.timestamp:g} is before the previous line's "
                                 f"{last_ms:g} (lines must be sorted by arrival time)")
        last_ms = line.timestamp
        yield Request(request_id, line.timestamp / 1000.0, prompt_of(line.hash_ids, line.input_length),
                      line.output_length)
