"""What goes over the wire: the target URL, the request body per API, and the reading of one streamed chunk.

Two APIs, both streaming server-sent events (``data: {json}`` lines, then ``data: [DONE]``):

- ``sglang``: SGLang's native ``POST /generate`` with ``input_ids`` (the token ids as ints) and
  ``sampling_params`` {max_new_tokens, ignore_eos, temperature}. Each chunk carries ``meta_info`` with the
  cumulative ``completion_tokens``, ``prompt_tokens`` and ``cached_tokens``; without SGLang's incremental
  streaming option ``output_ids`` is cumulative too, so new tokens are counted from ``completion_tokens`` deltas.
  An error inside the stream is a chunk ``{"error": {"message": ...}}``; an aborted request has
  ``meta_info.finish_reason.type == "abort"``.
- ``openai``: the OpenAI-compatible ``POST /v1/completions`` with ``prompt`` as a list of token ids,
  ``max_tokens``, ``ignore_eos`` (an SGLang extra) and ``stream_options`` {include_usage, continuous_usage_stats},
  so every chunk's ``usage.completion_tokens`` is cumulative and the last one has
  ``usage.prompt_tokens_details.cached_tokens`` (when the server reports cache hits).
"""

from __future__ import annotations

import ipaddress
import json
from array import array
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from schedctl.tokens import SYNTHETIC_TOKEN_BASE, TokenArray
from schedctl.workloads.types import Request

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class Api(StrEnum):
    SGLANG = "sglang"
    OPENAI = "openai"


class RemoteRefused(ValueError):
    """The URL is not a loopback address and remote load was not allowed."""


def check_url(url: str, allow_remote: bool = False) -> str:
    """The base URL without a trailing slash; raises ValueError (RemoteRefused for a non-loopback host)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http://HOST:PORT or https://HOST:PORT")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port ({exc})") from None
    host = parts.hostname
    if not allow_remote and not is_loopback(host):
        raise RemoteRefused(f"host {host!r} is not loopback (127.0.0.0/8, localhost, ::1); "
                            "pass --allow-remote to send load to another machine")
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it could resolve anywhere


def path_of(api: Api) -> str:
    return "/generate" if api is Api.SGLANG else "/v1/completions"


def fit_vocab(ids: TokenArray | list[int], vocab_size: int | None) -> list[int]:
    """Token ids a model with ``vocab_size`` tokens accepts: ids below it stay, larger ones are hashed into it.

    Synthetic workloads use ids up to 2**24 and beyond, and SGLang 0.5.23 does not check ``input_ids`` against
    the vocabulary: one id out of range kills the server (IndexError in the embedding). The hash (splitmix64's
    finaliser) is fixed, so equal ids stay equal and prefix sharing survives; two different ids meet with
    probability 1 / vocab_size, so a shared prefix the workload does not have needs several such accidents in a
    row. ``None``: the ids as they are, but a synthetic id (>= 2**24, which no model has) raises StreamError
    (the request fails unsent) rather than kill the server.
    """
    arr = np.frombuffer(ids, dtype=np.int64) if isinstance(ids, array) else np.asarray(ids, dtype=np.int64)
    top = int(arr.max()) if arr.size else 0
    if vocab_size is None and top >= SYNTHETIC_TOKEN_BASE:
        raise StreamError(f"not sent: token id {top} is synthetic (>= 2**24) and no model has it; "
                          "give vocab_size (--vocab-size) to fit the ids into the model's vocabulary")
    if vocab_size is None or top < vocab_size:
        return [int(t) for t in arr.tolist()]
    z = arr.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return [int(t) for t in np.where(arr < vocab_size, arr, (z % np.uint64(vocab_size)).astype(np.int64)).tolist()]


def request_body(api: Api, req: Request, rid: str, vocab_size: int | None = None,
                 ignore_eos: bool = True) -> dict[str, Any]:
    """The request's JSON. ``ignore_eos`` (the default) makes the output exactly ``req.output_len`` tokens long;
    without it the model may stop earlier, and SGLang then reserves only a share of the outputs still to come
    (``schedule_conservativeness``), as for real traffic."""
    ids = fit_vocab(req.prompt, vocab_size)
    if api is Api.SGLANG:
        return {
            "rid": rid, "input_ids": ids, "stream": True,
            "sampling_params": {"max_new_tokens": req.output_len, "ignore_eos": ignore_eos, "temperature": 0.0},
        }
    return {
        "rid": rid, "prompt": ids, "max_tokens": req.output_len, "ignore_eos": ignore_eos, "temperature": 0.0,
        "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }


class StreamError(Exception):
    """The stream said the request failed, or could not be read; ``str()`` is the reason."""


@dataclass(slots=True)
class Chunk:
    """What one SSE ``data:`` line says. ``completion_tokens`` is cumulative; None fields were not reported."""

    done: bool = False  # the [DONE] line
    completion_tokens: int | None = None
    delta_tokens: int = 0  # when completion_tokens is absent: the tokens this chunk brings, as far as visible
    prompt_tokens: int | None = None
    cached_tokens: int | None = None


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def parse_data(api: Api, payload: str) -> Chunk:
    """One ``data:`` payload; raises StreamError for an error chunk or a payload that is not a JSON object."""
    if payload.strip() == "[DONE]":
        return Chunk(done=True)
    try:
        obj = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise StreamError(f"malformed stream: a data line is not JSON ({exc.msg}): {payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise StreamError(f"malformed stream: a data line is not a JSON object: {payload[:80]!r}")
    if "error" in obj:
        err = obj["error"]
        msg = err.get("message", err) if isinstance(err, dict) else err
        raise StreamError(f"server error in stream: {msg}")
    if api is Api.SGLANG:
        meta = obj.get("meta_info") or {}
        if not isinstance(meta, dict):
            raise StreamError("malformed stream: meta_info is not an object")
        finish = meta.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":
            raise StreamError(f"aborted by the server: {finish.get('message', 'no reason given')}")
        ids = obj.get("output_ids")
        total = _int(meta.get("completion_tokens"))
        if total is None and isinstance(ids, list):
            total = len(ids)  # cumulative without incremental streaming
        return Chunk(completion_tokens=total, prompt_tokens=_int(meta.get("prompt_tokens")),
                     cached_tokens=_int(meta.get("cached_tokens")))
    usage = obj.get("usage") or {}
    choices = obj.get("choices") or []
    if not isinstance(usage, dict) or not isinstance(choices, list):
        raise StreamError("malformed stream: usage or choices has the wrong type")
    details = usage.get("prompt_tokens_details") or {}
    texts = [c.get("text") for c in choices if isinstance(c, dict)]
    return Chunk(completion_tokens=_int(usage.get("completion_tokens")),
                 delta_tokens=sum(1 for t in texts if t),
                 prompt_tokens=_int(usage.get("prompt_tokens")),
                 cached_tokens=_int(details.get("cached_tokens")) if isinstance(details, dict) else None)
