"""The open loop: send each request at its offset, whether or not earlier ones have answered, within bounds.

Bounds: ``max_inflight`` requests at once (a send waits for a slot; the wait shows as send lag), no send at or
after ``duration_s``, and every request ends within ``request_timeout_s`` — so a run takes at most
``duration_s + request_timeout_s``. Whatever stops the run (the stream ends, the duration, Ctrl-C, a bad line in
a lazily read trace), what was measured so far comes back in the LoadResult: run_load does not raise for those;
``stop_reason`` and ``input_error`` say what happened.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ConfigDict, Field

from schedctl.loadgen.client import RequestResult, send_one
from schedctl.loadgen.protocol import Api, check_url
from schedctl.loadgen.summary import LoadSummary, StopReason, summarize
from schedctl.sim.records import RequestRecord
from schedctl.workloads.types import Request

DEFAULT_URL = "http://127.0.0.1:30000"


class LoadConfig(BaseModel):
    """How to send: where, which API, and the bounds of the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = DEFAULT_URL
    api: Api = Api.SGLANG
    duration_s: float | None = Field(None, gt=0, description="send nothing at or after this offset")
    warmup_s: float = Field(0.0, ge=0, description="leave requests scheduled before this out of the summary")
    request_timeout_s: float = Field(60.0, gt=0, description="a request not finished by then is a timeout")
    max_inflight: int = Field(256, ge=1, description="requests in flight at once")
    vocab_size: int | None = Field(None, ge=2, description="hash token ids at or above this into it (fit_vocab)")
    ignore_eos: bool = Field(True, description="every output exactly output_len tokens long (SGLang then reserves "
                             "all of it); False: the model may stop early, as real traffic does")
    allow_remote: bool = False


@dataclass
class LoadResult:
    """Every sent request's measurements, in send order, and the summary of the run."""

    results: list[RequestResult]
    summary: LoadSummary
    stop_reason: StopReason
    input_error: Exception | None = None  # the request stream raised this (stop_reason "input_error")

    def records(self) -> list[RequestRecord]:
        return [r.record() for r in self.results]

    @property
    def unreachable(self) -> bool:
        """Requests were sent and not one of them could connect."""
        return bool(self.results) and all(r.connect_failed for r in self.results)


@dataclass
class _Run:
    results: list[RequestResult] = field(default_factory=list)
    stop_reason: StopReason = "completed"
    input_error: Exception | None = None


def run_load(
    requests: Iterable[Request], config: LoadConfig | None = None, *,
    on_result: Callable[[RequestResult], None] | None = None, rate: float | None = None, seed: int | None = None,
) -> LoadResult:
    """Replay ``requests`` (``arrival_s`` = offset to send at, sorted; see ``retime``) against ``config.url``.

    Raises ValueError (RemoteRefused) for a URL it will not send to, before sending anything. ``on_result`` is
    called as each request ends. ``rate`` and ``seed`` are only copied into the summary. Ctrl-C ends the run
    early and returns what was measured (stop_reason "interrupted").
    """
    cfg = config or LoadConfig()
    base_url = check_url(cfg.url, cfg.allow_remote)
    run = _Run()
    start = time.monotonic()
    try:
        asyncio.run(_drive(requests, cfg, base_url, run, on_result))
    except KeyboardInterrupt:
        run.stop_reason = "interrupted"
    for r in run.results:
        if r.status == "pending":
            r.fail("cancelled", "the run was interrupted while this request was in flight")
    summary = summarize(run.results, api=cfg.api.value, url=base_url, warmup_s=cfg.warmup_s,
                        duration_s=time.monotonic() - start, stop_reason=run.stop_reason, rate=rate, seed=seed)
    return LoadResult(run.results, summary, run.stop_reason, run.input_error)


async def _drive(
    requests: Iterable[Request], cfg: LoadConfig, base_url: str, run: _Run,
    on_result: Callable[[RequestResult], None] | None,
) -> None:
    loop = asyncio.get_running_loop()
    t0 = [loop.time()]  # reset once the client is ready: its set-up is not the first request's lag

    def clock() -> float:
        return loop.time() - t0[0]

    slots = asyncio.Semaphore(cfg.max_inflight)
    tag = uuid.uuid4().hex[:8]  # request ids unique across runs against one server
    limits = httpx.Limits(max_connections=cfg.max_inflight, max_keepalive_connections=cfg.max_inflight)
    timeout = httpx.Timeout(cfg.request_timeout_s)

    async def one(req: Request, result: RequestResult) -> None:
        try:
            await send_one(client, cfg.api, req, f"schedctl-load-{tag}-{req.request_id}", result, clock,
                           cfg.request_timeout_s, cfg.vocab_size, cfg.ignore_eos)
        finally:
            slots.release()
        if on_result is not None:
            on_result(result)

    # trust_env=False: no proxy from the environment between us and a loopback server
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, trust_env=False) as client, \
            asyncio.TaskGroup() as tasks:
        stream = iter(requests)
        t0[0] = loop.time()
        while True:
            try:
                req = next(stream)
            except StopIteration:
                break
            except Exception as exc:  # a bad line in a lazily read trace: stop sending, keep what was measured
                run.stop_reason, run.input_error = "input_error", exc
                break
            if cfg.duration_s is not None and req.arrival_s >= cfg.duration_s:
                run.stop_reason = "duration"
                break
            delay_s = req.arrival_s - clock()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            await slots.acquire()
            if cfg.duration_s is not None and clock() >= cfg.duration_s:
                slots.release()  # waited for a slot past the end of the run
                run.stop_reason = "duration"
                break
            result = RequestResult(request_id=req.request_id, scheduled_s=req.arrival_s, send_s=clock(),
                                   sent_prompt_tokens=len(req.prompt), slo_class=req.slo_class)
            run.results.append(result)
            tasks.create_task(one(req, result))
