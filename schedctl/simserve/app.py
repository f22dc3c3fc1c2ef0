"""`schedctl sim serve`: the embedded engine behind SGLang's HTTP surface — a stand-in for one GPU replica.

The thin I/O shell around :class:`schedctl.sim.paced.PacedEngine`: a FastAPI app whose one background task (the
driver) advances the engine to the clock, releases the tokens that are due and wakes the requests waiting for
them, then sleeps until the next token is due or a request arrives. The clock is injectable (``clock``: wall
seconds, default ``time.monotonic``); the engine's simulated time is ``(clock() - start) × time_scale``.

SGLang 0.5.23's surface, as far as schedctl and SGLang's router use it (``srt/entrypoints/http_server.py``):

* ``POST /generate`` with ``input_ids`` and ``sampling_params.max_new_tokens``, streaming (``data: {...}`` lines
  with cumulative ``output_ids`` and ``meta_info``, then ``data: [DONE]``) or one JSON answer;
* ``GET /metrics`` (SGLang's metric names, ``metrics.py``), ``GET /health`` (and ``/health_generate``),
  ``GET /server_info`` (and ``/get_server_info``), ``GET /model_info`` (and ``/get_model_info``), ``/v1/models``;
* ``POST /set_internal_state`` with the schedctl plugin's keys, checked by the plugin's own code
  (``engine_adapter/sglang/plugin_state.py``) and applied to the embedded engine's queue order; the plugin's
  readback sits in ``/server_info`` ``internal_states[0]["schedctl"]`` as in a real server.

``/server_info`` says what this is: ``"schedctl_stand_in": "simulated GPU replica: <gpu>, <model> ..."``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schedctl import __version__
from schedctl.engine_adapter.sglang import channel
from schedctl.engine_adapter.sglang.plugin_state import PluginState
from schedctl.policies.spec import KLPMSpec, PolicySpec, policy_label
from schedctl.sim.paced import PacedEngine, Stream
from schedctl.sim.run import summarize
from schedctl.simserve.metrics import EngineGauges, ReplicaMetrics
from schedctl.tokens import as_tokens

logger = logging.getLogger("schedctl.simserve")

SGLANG_VERSION = "0.5.23"  # the release whose HTTP surface and metrics this replica mimics
_MAX_WAIT_S = 0.5  # the driver's longest sleep (wall seconds) with nothing due: a bound, not a tick
# First tokens go out when due; later ones are gathered into one chunk per stream_interval_s (SGLang's
# --stream-interval gathers by tokens): waking for every token of every stream would spend the CPU on chunks.
_MIN_WAIT_S = 0.0005  # and its shortest, so a clock that has not moved yet is not spun on


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, ignore_eos...: accepted, no effect on a simulated model

    max_new_tokens: int = Field(128, ge=1, le=1_000_000)  # SGLang's default: 128


class GenerateBody(BaseModel):
    """The part of SGLang's ``GenerateReqInput`` a replica of token ids serves (no text: no tokenizer here)."""

    model_config = ConfigDict(extra="allow")

    input_ids: list[int] = Field(min_length=1)
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    stream: bool = False
    rid: str | None = None


class ReplicaInfo(BaseModel):
    """What the replica stands for, as /server_info and /model_info report it."""

    model_config = ConfigDict(frozen=True)

    gpu: str
    model: str
    time_scale: float = Field(gt=0)
    base_policy: str  # the order with the plugin off (SGLang's own --schedule-policy)


class _Waiter:
    __slots__ = ("event", "observed", "rid", "streaming")

    def __init__(self, rid: str, streaming: bool) -> None:
        self.rid = rid
        self.streaming = streaming
        self.event = asyncio.Event()
        self.observed = 0  # tokens already counted in the metrics


class SimServer:
    """One stand-in replica: the paced engine, its control state and metrics, and the driver task."""

    def __init__(self, paced: PacedEngine, info: ReplicaInfo, base_policy: PolicySpec,
                 clock: Callable[[], float] = time.monotonic, stream_interval_s: float = 0.02) -> None:
        self.paced = paced
        self.info = info
        self.base_policy = base_policy
        self.plugin = PluginState()
        self._clock = clock
        self._t0 = clock()
        self.stream_interval_s = stream_interval_s  # wall seconds between chunks of a stream after its first token
        self._last_bulk = -math.inf  # wall time of the last release of every stream's due tokens
        self.startup_time = time.time()
        self._waiters: dict[int, _Waiter] = {}
        self._kick: asyncio.Event | None = None
        self.failure: str | None = None  # the engine raised: every request fails, /health answers 503
        eng = paced.engine
        self.metrics = ReplicaMetrics(info.model, EngineGauges(
            queue=lambda: eng.queue_len, running=lambda: eng.running, token_usage=lambda: eng.kv_utilization,
            cache_hit_rate=lambda: eng.cache.hit_tokens / eng.cache.lookup_tokens if eng.cache.lookup_tokens else 0.0,
            retractions=lambda: eng.retractions,
        ))

    def now_s(self) -> float:
        """The engine's simulated time now."""
        return (self._clock() - self._t0) * self.info.time_scale

    # -- the driver -------------------------------------------------------------------------------------------
    async def drive(self) -> None:
        self._kick = asyncio.Event()
        while True:
            try:
                wait_s = self._step()
            except Exception as exc:  # an engine bug: fail loudly, every request and /health, never hang
                logger.exception("simulated engine failed")
                self.failure = f"simulated engine failed: {type(exc).__name__}: {exc}"
                for w in self._waiters.values():
                    w.event.set()
                return
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait_s)

    def _step(self) -> float:
        """Advance, release, wake; the wall seconds to sleep before the next step."""
        now = self.now_s()
        self.paced.advance(now)
        wall = self._clock()
        bulk = wall - self._last_bulk >= self.stream_interval_s
        if bulk:
            self._last_bulk = wall
        for stream in self.paced.release(now, first_only=not bulk):
            waiter = self._waiters.get(stream.request_id)
            if waiter is None:
                continue
            self.metrics.observe(stream, waiter.observed, waiter.streaming)
            waiter.observed = stream.released
            waiter.event.set()
        first, later = self.paced.next_event_s()
        now = self.now_s()
        scale = self.info.time_scale
        wait_s = min((first - now) / scale, max((later - now) / scale, self.stream_interval_s))
        return min(max(wait_s, _MIN_WAIT_S), _MAX_WAIT_S)

    # -- requests ---------------------------------------------------------------------------------------------
    def submit(self, body: GenerateBody) -> tuple[Stream, _Waiter]:
        stream = self.paced.submit(as_tokens(body.input_ids), body.sampling_params.max_new_tokens, self.now_s())
        waiter = _Waiter(body.rid or f"sim-{stream.request_id}", body.stream)
        self._waiters[stream.request_id] = waiter
        if self._kick is not None:
            self._kick.set()
        return stream, waiter

    async def updates(self, stream: Stream, waiter: _Waiter) -> AsyncIterator[dict[str, Any]]:
        """One answer object per batch of released tokens, the last one with its finish reason."""
        sent = 0
        try:
            while True:
                await waiter.event.wait()
                waiter.event.clear()
                if self.failure is not None:
                    yield {"error": {"message": self.failure, "type": "internal_error", "code": 500}}
                    return
                if stream.released > sent or stream.finished:
                    sent = stream.released
                    yield self._answer(stream, waiter.rid)
                if stream.finished:
                    return
        finally:
            self._waiters.pop(stream.request_id, None)

    def _answer(self, stream: Stream, rid: str) -> dict[str, Any]:
        n = stream.released
        finish: dict[str, Any] | None = None
        if stream.aborted:
            finish = {"type": "abort", "message": "the request does not fit in the KV cache of this replica"}
        elif stream.finished:
            finish = {"type": "length", "length": n}
        meta: dict[str, Any] = {
            "id": rid, "finish_reason": finish, "prompt_tokens": stream.prompt_tokens, "weight_version": "default",
            "num_retractions": stream.retractions, "completion_tokens": n, "cached_tokens": stream.cached_tokens,
        }
        if finish is not None and stream.token_times_s:
            meta["e2e_latency"] = stream.token_times_s[-1] - stream.arrival_s  # simulated seconds
        return {"text": "", "output_ids": stream.output_ids[:n].tolist(), "meta_info": meta}

    # -- control ----------------------------------------------------------------------------------------------
    def set_internal_state(self, server_args: dict[str, Any]) -> list[bool]:
        """The plugin's keys, checked as the plugin checks them inside SGLang, applied to the engine's queue."""
        try:
            for key, value in server_args.items():
                self.plugin.check(key, value, "lpm")
            kind = channel.as_int(server_args.get(channel.KEY_KIND, self.plugin.kind), channel.KEY_KIND)
            k = channel.as_int(server_args.get(channel.KEY_K, self.plugin.k), channel.KEY_K)
            spec = channel.decode_policy(kind, k)
            if spec is not None and not isinstance(spec, KLPMSpec):
                raise ValueError(f"{policy_label(spec)}: this stand-in applies the plugin's queue orders (fcfs, lpm, "
                                 "klpm) only")
        except ValueError as exc:
            logger.warning("set_internal_state rejected: %s", exc)
            self.plugin.discard_pending()
            return [False]
        for key, value in server_args.items():
            self.plugin.set_field(key, value)
        self.paced.engine.set_policy(spec or self.base_policy)
        return [True]

    def server_info(self) -> dict[str, Any]:
        i = self.info
        return {
            "schedctl_stand_in": f"simulated GPU replica: {i.gpu}, {i.model} (schedctl {__version__} embedded engine, "
                                 f"time scale {i.time_scale:g}); no GPU, no model weights",
            "model_path": i.model, "served_model_name": i.model, "schedule_policy": "lpm",
            "time_scale": i.time_scale, "startup_time": self.startup_time, "version": SGLANG_VERSION,
            "frontend": "schedctl-sim",
            "internal_states": [{
                channel.SERVER_INFO_KEY: self.plugin.snapshot(),
                "schedctl_sim": {"active_policy": policy_label(self.paced.engine.policy),
                                 "base_policy": i.base_policy, "sim_now_s": self.now_s(),
                                 "queue_len": self.paced.engine.queue_len, "running": self.paced.engine.running},
            }],
        }

    def model_info(self) -> dict[str, Any]:
        return {"model_path": self.info.model, "served_model_name": self.info.model, "tokenizer_path": None,
                "is_generation": True, "weight_version": "default", "load_format": "schedctl-sim",
                "model_type": "schedctl-sim", "architectures": None}


def build_app(server: SimServer) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(server.drive())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="schedctl sim serve", lifespan=lifespan)

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        try:
            body = GenerateBody.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            return JSONResponse({"error": {"message": f"bad /generate body: {_reason(exc)}", "code": 400}}, 400)
        if server.failure is not None:
            return JSONResponse({"error": {"message": server.failure, "code": 500}}, 500)
        stream, waiter = server.submit(body)
        updates = server.updates(stream, waiter)
        if body.stream:
            async def sse() -> AsyncIterator[bytes]:
                async for update in updates:
                    yield b"data: " + json.dumps(update).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        last: dict[str, Any] = {}
        async for update in updates:
            last = update
        return JSONResponse(last, 500 if "error" in last else 200)

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        return Response(status_code=503 if server.failure is not None else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> dict[str, Any]:
        return server.server_info()

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> dict[str, Any]:
        return server.model_info()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": server.info.model, "object": "model", "owned_by": "schedctl-sim"}]}

    @app.get("/schedctl_sim/summary")
    async def summary() -> Response:
        """Not SGLang's: the figures of the requests this replica finished, in simulated seconds (the fleet
        benchmark reads them per replica; a router in front hides which replica served a request)."""
        return Response(summarize(server.paced.engine).model_dump_json(), media_type="application/json")

    @app.get("/schedctl_sim/ttfts")
    async def ttfts() -> dict[str, list[float]]:
        """Not SGLang's: the TTFT of every request this replica finished (simulated seconds), to pool a fleet's."""
        return {"ttft_s": server.paced.engine.completed.ttft_s().tolist()}

    @app.api_route("/set_internal_state", methods=["POST", "PUT"])
    async def set_internal_state(request: Request) -> Response:
        try:
            body = await request.json()
            args = body["server_args"]
            if not isinstance(args, dict):
                raise TypeError("server_args is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": {"message": f"bad /set_internal_state body: {exc}", "code": 400}}, 400)
        return JSONResponse(server.set_internal_state(args))

    return app


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return str(exc)
