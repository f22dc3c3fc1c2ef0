"""One request against a live engine, measured on the client: send time, first token, every token, the end.

Token timing: a chunk is timed when its line has been read. A chunk that brings n > 1 new tokens at once (the
server coalesced them, or the stream is not incremental) gives all n the same time, so it contributes its gap
and then n - 1 zero gaps — what a user watching the stream sees. The first token is the first chunk carrying at
least one output token; a request yields exactly output_tokens - 1 gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from schedctl.loadgen.protocol import Api, StreamError, parse_data, path_of, request_body
from schedctl.sim.records import RequestRecord
from schedctl.workloads.types import Request

Status = Literal["pending", "ok", "error", "timeout", "cancelled"]
_BODY_SNIPPET_CHARS = 200


@dataclass(slots=True)
class RequestResult:
    """What was measured of one sent request; times are seconds on the run's clock (0 = start of the run)."""

    request_id: int
    scheduled_s: float  # the arrival offset the stream asked for
    send_s: float  # when it was sent (scheduled_s plus the client's lag)
    sent_prompt_tokens: int
    slo_class: str = "default"
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None  # as the server counted them (meta_info / usage)
    cached_tokens: int | None = None  # prompt tokens the server took from its prefix cache
    status: Status = "pending"
    error: str | None = None
    connect_failed: bool = False

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.send_s

    def tbt_s(self) -> list[float]:
        t = self.token_times_s
        return [t[i + 1] - t[i] for i in range(len(t) - 1)]

    def fail(self, status: Status, reason: str) -> None:
        self.status = status
        self.error = reason

    def record(self) -> RequestRecord:
        return RequestRecord(
            request_id=self.request_id, arrival_s=self.send_s, first_token_s=self.first_token_s,
            finish_s=self.finish_s,
            prompt_tokens=self.prompt_tokens if self.prompt_tokens is not None else self.sent_prompt_tokens,
            cached_tokens=self.cached_tokens, output_tokens=self.output_tokens, slo_class=self.slo_class,
            ttft_s=self.ttft_s, status="cancelled" if self.status == "pending" else self.status, error=self.error,
            scheduled_s=self.scheduled_s,
        )


async def send_one(
    client: httpx.AsyncClient, api: Api, req: Request, rid: str, result: RequestResult,
    clock: Callable[[], float], timeout_s: float, vocab_size: int | None = None, ignore_eos: bool = True,
) -> None:
    """Send ``req``, stream the answer into ``result``; never raises except CancelledError (``result`` says how it
    ended: one request's failure, whatever it is, never ends the run)."""
    try:
        body = request_body(api, req, rid, vocab_size, ignore_eos)
        async with asyncio.timeout(timeout_s):
            await _stream(client, api, body, result, clock)
    except (TimeoutError, httpx.TimeoutException):
        result.fail("timeout", f"no complete answer within {timeout_s:g} s ({result.output_tokens} tokens received)")
    except StreamError as exc:
        result.fail("error", str(exc))
    except httpx.ConnectError as exc:
        result.connect_failed = True
        result.fail("error", f"cannot connect: {exc or type(exc).__name__}")
    except httpx.HTTPError as exc:
        result.fail("error", f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        result.fail("cancelled", "the run was interrupted while this request was in flight")
        raise
    except Exception as exc:  # anything else a server can provoke (an undecodable answer...) fails this request only
        result.fail("error", f"{type(exc).__name__}: {exc}")


async def _stream(
    client: httpx.AsyncClient, api: Api, body: dict[str, Any], result: RequestResult, clock: Callable[[], float],
) -> None:
    async with client.stream("POST", path_of(api), json=body) as resp:
        if resp.status_code != 200:
            answer = (await resp.aread())[:_BODY_SNIPPET_CHARS].decode("utf-8", errors="replace").strip()
            result.fail("error", f"HTTP {resp.status_code}: {answer or resp.reason_phrase}")
            return
        seen = 0
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event: / id: fields
            chunk = parse_data(api, line[5:].strip())
            now = clock()
            if chunk.done:
                result.finish_s = now
                result.status = "ok"
                return
            total = chunk.completion_tokens if chunk.completion_tokens is not None else seen + chunk.delta_tokens
            if total > seen:
                if result.first_token_s is None:
                    result.first_token_s = now
                result.token_times_s.extend([now] * (total - seen))
                seen = total
            if chunk.prompt_tokens is not None:
                result.prompt_tokens = chunk.prompt_tokens
            if chunk.cached_tokens is not None:
                result.cached_tokens = chunk.cached_tokens
        raise StreamError(f"stream ended without [DONE] after {seen} tokens")
