"""A STAND-IN for SGLang's streaming ``POST /generate`` (and ``POST /v1/completions``), for the load generator's tests.

It exists for the cases a real SGLang server cannot be made to produce on demand: an HTTP 500, a malformed or
truncated stream, an error chunk, a request that hangs, and exact pacing (a deliberate first-token delay, a fixed
gap between chunks, several tokens per chunk). It speaks SGLang 0.5.23's wire format as `schedctl load` reads it
(SSE ``data: {json}`` lines; ``meta_info`` with cumulative ``completion_tokens``, ``prompt_tokens``,
``cached_tokens``; cumulative ``output_ids``; a final ``data: [DONE]``) and, for ``/v1/completions``, the
OpenAI-compatible chunks with continuous ``usage``. Its "prefix cache" counts as cached the longest prefix a
prompt shares with any earlier prompt. Tests against the real server are the ``live`` tests, elsewhere.

It runs uvicorn in a thread on a socket bound to 127.0.0.1 (a port of its own); use it as a context manager so
it always stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from schedctl.policies.radix import common_prefix_len

Mode = Literal["ok", "http_500", "malformed", "error_chunk", "no_done", "hang"]


@dataclass(frozen=True)
class Behaviour:
    """How the server answers one request."""

    mode: Mode = "ok"
    first_token_delay_s: float = 0.0  # from receiving the request to the first chunk
    token_interval_s: float = 0.0  # between two chunks
    tokens_per_chunk: int = 1


@dataclass
class Seen:
    request_id: int
    received_s: float  # time.monotonic() when the request arrived
    body: dict[str, Any]


@dataclass
class FakeStreamServer:
    """``behave`` is one Behaviour for every request, or a function of the request id (from ``rid``)."""

    behave: Behaviour | Callable[[int], Behaviour] = field(default_factory=Behaviour)
    seen: list[Seen] = field(default_factory=list)
    max_concurrent: int = 0
    finished: int = 0  # streams that ran to their end
    _active: int = 0
    _prompts: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = Starlette(routes=[Route("/generate", self._generate, methods=["POST"]),
                                Route("/v1/completions", self._completions, methods=["POST"])])
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> FakeStreamServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake stream server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    # --- the two endpoints --------------------------------------------------------------------------------------

    async def _generate(self, request: Request) -> Response:
        return await self._answer(request, "input_ids", "sampling_params", self._sglang_chunk)

    async def _completions(self, request: Request) -> Response:
        return await self._answer(request, "prompt", None, self._openai_chunk)

    async def _answer(self, request: Request, prompt_key: str, params_key: str | None,
                      chunk: Callable[[list[int], int, int, bool], dict[str, Any]]) -> Response:
        body = await request.json()
        rid = str(body.get("rid", "x-0"))
        request_id = int(rid.rsplit("-", 1)[1])
        self.seen.append(Seen(request_id, time.monotonic(), body))
        b = self.behave(request_id) if callable(self.behave) else self.behave
        if b.mode == "http_500":
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
        prompt = [int(t) for t in body[prompt_key]]
        params = body[params_key] if params_key else body
        max_tokens = int(params["max_new_tokens" if params_key else "max_tokens"])
        cached = max((_common_prefix(prompt, p) for p in self._prompts), default=0)
        self._prompts.append(prompt)
        return StreamingResponse(self._stream(b, prompt, min(cached, len(prompt) - 1), max_tokens, chunk),
                                 media_type="text/event-stream")

    async def _stream(self, b: Behaviour, prompt: list[int], cached: int, max_tokens: int,
                      chunk: Callable[[list[int], int, int, bool], dict[str, Any]]) -> AsyncIterator[bytes]:
        self._active += 1
        self.max_concurrent = max(self.max_concurrent, self._active)
        try:
            await asyncio.sleep(b.first_token_delay_s if b.mode != "hang" else 3600)
            done = 0
            while done < max_tokens:
                if done:
                    await asyncio.sleep(b.token_interval_s)
                done = min(max_tokens, done + b.tokens_per_chunk)
                if b.mode == "malformed" and done > 1:
                    yield b"data: {not json\n\n"
                    return
                if b.mode == "error_chunk" and done > 1:
                    yield b'data: {"error": {"message": "injected stream error"}}\n\n'
                    yield b"data: [DONE]\n\n"
                    return
                yield b"data: " + json.dumps(chunk(prompt, cached, done, done == max_tokens)).encode() + b"\n\n"
            if b.mode != "no_done":
                yield b"data: [DONE]\n\n"
            self.finished += 1
        finally:
            self._active -= 1

    @staticmethod
    def _sglang_chunk(prompt: list[int], cached: int, done: int, last: bool) -> dict[str, Any]:
        return {"text": None, "output_ids": list(range(done)), "meta_info": {
            "prompt_tokens": len(prompt), "completion_tokens": done, "cached_tokens": cached,
            "finish_reason": {"type": "length", "length": done} if last else None}}

    @staticmethod
    def _openai_chunk(prompt: list[int], cached: int, done: int, last: bool) -> dict[str, Any]:
        return {"object": "text_completion", "choices": [{"index": 0, "text": f" w{done}",
                                                          "finish_reason": "length" if last else None}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": done, "total_tokens": len(prompt) + done,
                          "prompt_tokens_details": {"cached_tokens": cached}}}


def _common_prefix(a: list[int], b: list[int]) -> int:
    return common_prefix_len(a, 0, b)


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    """Serve on 127.0.0.1 until SIGTERM or Ctrl-C (for benchmarks/loadgen_client.py); prints the URL when up."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--first-token-delay-s", type=float, default=0.0)
    ap.add_argument("--token-interval-s", type=float, default=0.0)
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    args = ap.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    behaviour = Behaviour(first_token_delay_s=args.first_token_delay_s, token_interval_s=args.token_interval_s,
                          tokens_per_chunk=args.tokens_per_chunk)
    with FakeStreamServer(behaviour) as srv:
        print(srv.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
