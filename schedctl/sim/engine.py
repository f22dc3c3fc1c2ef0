"""The embedded serving engine: continuous batching over a radix prefix cache, in simulated time.

Batch formation is SGLang's (``Scheduler.get_next_batch_to_run``): every iteration, if requests wait and memory
allows, run a prefill round — the policy orders the waiting queue (the shared k-LPM queue) and requests are
admitted in that order while the chunked-prefill token budget and the KV capacity allow; a prompt longer than
the budget left is chunked and continues first in the next round; every admitted prompt is inserted in the
cache at once, so requests of one round that share an uncached prefix compute it once. Otherwise run decode
steps for every running request. A prompt's last token is always recomputed (its logits give the first output
token), as in SGLang. Admission reserves KV for a share (``new_token_ratio``) of the outputs still to come; when
decode cannot get a token per request, the newest running request is retracted to the waiting queue (its KV
freed, its prompt left in the cache) and the reserve share is raised, then decays back.

Time advances by events, not tokens: between two events (an arrival, a completion, memory running out, the
caller's horizon) the decode steps of a fixed batch are advanced in one go with closed-form durations
(``step_time.DecodeRun``). Per request the engine records arrival, first token, finish, prompt and cached
tokens, and (``record_token_times``) every token's time; time between tokens goes to a histogram.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.spec import FCFSSpec, PolicySpec, queue_k
from schedctl.sim.radix_cache import KVNode, RadixKVCache
from schedctl.sim.records import RequestLog, RequestRow, TBTHistogram
from schedctl.sim.step_time import StepBatch, StepTimeModel
from schedctl.tokens import SYNTHETIC_TOKEN_BASE, IdAllocator, TokenArray
from schedctl.workloads.types import Request

# Synthetic output ids live above the workloads' synthetic prompt ids so they never collide.
_OUTPUT_TOKEN_BASE = SYNTHETIC_TOKEN_BASE << 16


class EngineConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    chunked_prefill_tokens: int = Field(default=8192, ge=1, description="token budget of one prefill round")
    max_running_requests: int = Field(default=1024, ge=1)
    new_token_ratio: float = Field(default=0.4, ge=0, le=1, description="share of remaining outputs reserved")
    retract_token_ratio: float = Field(default=0.9, ge=0, le=1, description="reserve share right after a retraction")
    token_ratio_decay_per_step: float = Field(default=0.001, ge=0)
    record_token_times: bool = False
    max_decode_run_steps: int | None = Field(
        default=None, ge=1, description="cap on decode steps advanced at once (1 = SGLang's step-by-step loop; tests)"
    )


class _Live:
    """A request inside the engine (waiting, being prefilled, or decoding)."""

    __slots__ = ("cached_tokens", "done_tokens", "first_token_s", "generated", "join_ctx", "join_step",
                 "last_token_s", "node", "out_ids", "req", "retractions", "seq", "times", "tokens")

    def __init__(self, req: Request, seq: int, record_times: bool) -> None:
        self.req = req
        self.seq = seq  # arrival order
        self.tokens: TokenArray = req.prompt  # what (re)prefill must put in the KV cache
        self.done_tokens = 0  # how many of `tokens` are in the cache (chunked prefill progress)
        self.node: KVNode | None = None  # the cache node this request holds a lock on
        self.generated = 0  # output tokens emitted
        self.cached_tokens = -1  # prompt tokens found cached at first admission
        self.first_token_s = math.nan
        self.last_token_s = math.nan
        self.retractions = 0
        self.join_step = 0  # engine decode-step count when it (re)joined the decode batch
        self.join_ctx = 0  # its KV tokens at that moment
        self.out_ids: TokenArray | None = req.output_tokens
        self.times: list[float] | None = [] if record_times else None


class SimEngine:
    def __init__(
        self, config: EngineConfig, step_model: StepTimeModel, kv_capacity_tokens: int,
        policy: PolicySpec | None = None, requests: Iterable[Request] = (),
    ) -> None:
        self.cfg = config
        self.model = step_model
        self.cache = RadixKVCache(kv_capacity_tokens)
        self.policy: PolicySpec = policy or FCFSSpec()
        self.queue: KLPMQueue[_Live] = KLPMQueue(queue_k(self.policy), oracle=self.cache)
        self.cache.add_insert_listener(self.queue.on_cache_insert)
        self.now_s = 0.0
        self.completed = RequestLog(keep_token_times=config.record_token_times)
        self.tbt = TBTHistogram()
        self.first_token_times: list[tuple[float, float]] = []  # (arrival_s, first_token_s), drained by adapters
        self.arrivals = 0
        self.aborted: list[int] = []  # request ids that can never fit in the KV cache
        self.prefill_steps = 0
        self.decode_steps = 0
        self.retractions = 0
        self._source: Iterator[Request] = iter(())
        self._next: Request | None = None
        self._running: dict[int, _Live] = {}  # insertion order = admission order (newest last)
        self._finish_heap: list[tuple[int, int]] = []  # (decode step at which it finishes, seq)
        self._chunked: _Live | None = None
        self._fresh: dict[int, _Live] = {}  # running requests whose last token came from a prefill
        self._common = 0  # running requests whose last token came from the last decode step
        self._last_decode_end_s = 0.0
        self._ctx_sum = 0  # KV tokens of the running requests
        self._remaining = 0  # output tokens still to come for the running requests
        self._ratio = config.new_token_ratio
        self._out_ids = IdAllocator(_OUTPUT_TOKEN_BASE)
        self.add_requests(requests)

    # -- inputs --------------------------------------------------------------------------------------------
    def add_requests(self, requests: Iterable[Request]) -> None:
        """Queue more arrivals (sorted by arrival time) after the ones already pending."""
        pending = [self._next] if self._next is not None else []
        rest = self._source
        self._source = iter(_chain(pending, rest, requests))
        self._next = next(self._source, None)

    def set_policy(self, spec: PolicySpec) -> None:
        self.policy = spec
        self.queue.set_k(queue_k(spec))

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def queue_len(self) -> int:
        return len(self.queue) + (1 if self._chunked is not None else 0)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def kv_utilization(self) -> float:
        return self.cache.used_tokens / self.cache.capacity_tokens

    @property
    def next_arrival_s(self) -> float:
        return self._next.arrival_s if self._next is not None else math.inf

    def done(self) -> bool:
        return self._next is None and not self.queue and self._chunked is None and not self._running

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, until_s: float = math.inf, on_event: Callable[[SimEngine], None] | None = None) -> None:
        """Advance simulated time until ``until_s`` or until every request has finished."""
        while True:
            self._take_arrivals()
            if self.now_s >= until_s:
                return
            if (self.queue or self._chunked is not None) and self._prefill_round():
                pass
            elif self._running:
                self._decode(until_s)
            elif self._next is not None:
                self.now_s = min(self._next.arrival_s, until_s)  # idle until the next arrival
            else:
                return
            if on_event is not None:
                on_event(self)

    def _take_arrivals(self) -> None:
        while self._next is not None and self._next.arrival_s <= self.now_s:
            req = self._next
            live = _Live(req, self.arrivals, self.cfg.record_token_times)
            self.arrivals += 1
            self.queue.push(live, live.seq, tokens=live.tokens)
            self._next = next(self._source, None)

    # -- prefill -------------------------------------------------------------------------------------------
    def _prefill_round(self) -> bool:
        budget = self.cfg.chunked_prefill_tokens
        batch: list[tuple[_Live, int, int]] = []  # (request, new tokens, cached context)
        chunked, self._chunked = self._chunked, None
        candidates = [chunked] if chunked is not None else []
        while budget > 0 and (candidates or self.queue):
            if not candidates and len(self._running) + len(batch) >= self.cfg.max_running_requests:
                break
            live = candidates.pop() if candidates else self.queue.peek()
            assert live is not None
            if not self._admit(live, budget, batch):
                if live is chunked:
                    self._chunked = chunked  # keeps its lock and progress; tries again next round
                elif not self._running and not batch and self._chunked is None:
                    self._abort(self.queue.pop())  # cannot fit even in an empty engine
                    continue
                break
            if live is not chunked:
                self.queue.pop()
            budget -= batch[-1][1]
            if live.done_tokens < len(live.tokens):
                self._chunked = live  # the budget ran out inside this prompt
                break
        if not batch:
            return False
        self.now_s += self.model.step_s(StepBatch.of([(e, c) for _l, e, c in batch]))
        self.prefill_steps += 1
        for live, _e, _c in batch:
            if live.done_tokens == len(live.tokens):
                self._emit_from_prefill(live)
        return True

    def _need(self, live: _Live, cached: int, budget: int, others: bool, ratio: float, remaining: int) -> int:
        """KV tokens admitting ``live``'s next chunk needs: the chunk, plus the reserve for outputs to come.

        An engine with nothing else running or admitted admits without a reserve, as SGLang does.
        """
        take = min(len(live.tokens) - cached, budget)
        if not others:
            return take
        reserve = math.ceil(ratio * remaining)
        if cached + take == len(live.tokens):
            reserve += math.ceil(ratio * (live.req.output_len - live.generated))
        return take + reserve

    def _admit(self, live: _Live, budget: int, batch: list[tuple[_Live, int, int]]) -> bool:
        """Lock the cached prefix, check memory, allocate the next chunk; False (nothing held) if it won't fit."""
        cache = self.cache
        tokens = live.tokens
        fresh = live.node is None
        if fresh:
            node, cached = cache.lock_prefix(tokens, len(tokens) - 1)
        else:
            assert live.node is not None
            node, cached = live.node, live.done_tokens
        need = self._need(live, cached, budget, bool(self._running or batch), self._ratio, self._remaining)
        if need > cache.available_tokens:
            if fresh:
                cache.unlock(node)
            return False
        take = min(len(tokens) - cached, budget)
        if fresh and live.cached_tokens < 0:
            live.cached_tokens = cached
            cache.record_lookup(len(tokens), cached)
        cache.make_room(take)
        live.node = cache.extend_locked(node, tokens, cached + take)
        live.done_tokens = cached + take
        batch.append((live, take, cached))
        return True

    def _steps_until_admissible(self, limit: int) -> int:
        """Decode steps after which the next waiting request fits (``limit`` if not within it).

        SGLang re-checks admission before every step. Decoding shrinks the free KV by one token per running request
        per step and the reserve by at most that times the reserve share, so a request that does not fit now
        will not fit later — unless the share is still decaying after a retraction. Only then is it scanned.
        """
        live = self._chunked if self._chunked is not None else self.queue.peek()
        if live is None or self._ratio <= self.cfg.new_token_ratio:
            return limit
        if self._chunked is None and len(self._running) >= self.cfg.max_running_requests:
            return limit
        if live.node is None:
            cached, pinned = self.cache.prefix_unlocked(live.tokens, len(live.tokens) - 1)
        else:
            cached, pinned = live.done_tokens, 0
        budget = self.cfg.chunked_prefill_tokens
        batch = len(self._running)
        available = self.cache.available_tokens - pinned  # locking its prefix takes those out of the evictable
        decay, floor = self.cfg.token_ratio_decay_per_step, self.cfg.new_token_ratio
        for j in range(1, limit):
            ratio = max(floor, self._ratio - j * decay)
            if self._need(live, cached, budget, True, ratio, self._remaining - j * batch) <= available - j * batch:
                return j
        return limit

    def _emit_from_prefill(self, live: _Live) -> None:
        now = self.now_s
        live.generated += 1
        if live.times is not None:
            live.times.append(now)
        if live.generated == 1:
            live.first_token_s = now
            self.first_token_times.append((live.req.arrival_s, now))
        else:
            self.tbt.add(now - live.last_token_s)  # first token after a retraction: the stall counts
        live.last_token_s = now
        if live.generated >= live.req.output_len:
            self._finish(live)
            return
        seq = live.seq
        self._running[seq] = live
        self._fresh[seq] = live
        live.join_step = self.decode_steps
        live.join_ctx = len(live.tokens)
        self._ctx_sum += live.join_ctx
        left = live.req.output_len - live.generated
        self._remaining += left
        heapq.heappush(self._finish_heap, (self.decode_steps + left, seq))

    # -- decode --------------------------------------------------------------------------------------------
    def _decode(self, until_s: float) -> None:
        batch = len(self._running)
        heap = self._finish_heap
        while heap[0][1] not in self._running or self._finish_step(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: retracted since
        limit = min(heap[0][0] - self.decode_steps, self.cache.available_tokens // batch)
        if limit <= 0:
            self._retract_newest()
            return
        limit = self._steps_until_admissible(min(limit, self.cfg.max_decode_run_steps or limit))
        run = self.model.decode_run(batch, self._ctx_sum)
        horizon = min(self.next_arrival_s, until_s)
        n = run.steps_to_reach(horizon - self.now_s, limit) if horizon < math.inf else limit
        self.cache.make_room(n * batch)
        self.cache.inflight_tokens += n * batch
        first_end = self.now_s + run.step_s(0)
        if self._common:
            self.tbt.add(first_end - self._last_decode_end_s, self._common)
        for live in self._fresh.values():
            self.tbt.add(first_end - live.last_token_s)
        self.tbt.add_run(run, 1, n, batch)
        if self.cfg.record_token_times:
            t, times = self.now_s, []
            for j in range(n):
                t += run.step_s(j)
                times.append(t)
            for live in self._running.values():
                assert live.times is not None
                live.times.extend(times)
        self.now_s += run.total_s(n)
        self.decode_steps += n
        self._ctx_sum += n * batch
        self._remaining -= n * batch
        self._last_decode_end_s = self.now_s
        self._common = batch
        self._fresh.clear()
        self._ratio = max(self.cfg.new_token_ratio, self._ratio - n * self.cfg.token_ratio_decay_per_step)
        while heap and heap[0][0] <= self.decode_steps:
            step, seq = heapq.heappop(heap)
            done = self._running.get(seq)
            if done is not None and self._finish_step(seq) == step:
                self._leave_decode(done)
                self._finish(done)

    def _finish_step(self, seq: int) -> int:
        live = self._running[seq]
        return live.join_step + live.req.output_len - live.generated

    def _leave_decode(self, live: _Live) -> None:
        """Take a running request out of the decode batch and settle what it generated there.

        While a request decodes, ``generated`` holds its count at join; the steps since then are added here.
        """
        del self._running[live.seq]
        if self._fresh.pop(live.seq, None) is None:
            self._common -= 1
        steps = self.decode_steps - live.join_step
        self._ctx_sum -= live.join_ctx + steps
        self._remaining -= live.req.output_len - live.generated - steps
        self.cache.inflight_tokens -= steps
        live.generated += steps

    def _finish(self, live: _Live) -> None:
        req = live.req
        assert live.node is not None
        # Cache the prompt and the output but its last token (whose KV is never computed). `live.tokens` (the
        # prompt, plus the outputs so far if it was retracted) ends at the node it holds, so matching starts there.
        produced = len(live.tokens) - len(req.prompt)
        full = live.tokens + self._output_ids(live)[produced : req.output_len - 1]
        self.cache.insert(full, start=live.node)
        self.cache.unlock(live.node)
        live.node = None
        self.completed.append(RequestRow(
            request_id=req.request_id, arrival_s=req.arrival_s, first_token_s=live.first_token_s,
            finish_s=self.now_s, prompt_tokens=len(req.prompt), cached_tokens=live.cached_tokens,
            output_tokens=req.output_len, retractions=live.retractions, slo_class=req.slo_class,
            token_times_s=live.times,
        ))

    def _retract_newest(self) -> None:
        seq = next(reversed(self._running))
        live = self._running[seq]
        was_fresh = seq in self._fresh
        self._leave_decode(live)
        live.last_token_s = live.last_token_s if was_fresh else self._last_decode_end_s
        assert live.node is not None
        self.cache.unlock(live.node)
        live.node = None
        live.tokens = live.req.prompt + self._output_ids(live)[: live.generated]
        live.done_tokens = 0
        live.retractions += 1
        self.retractions += 1
        self._ratio = max(self._ratio, self.cfg.retract_token_ratio)
        self.queue.push(live, seq, tokens=live.tokens)

    def _output_ids(self, live: _Live) -> TokenArray:
        if live.out_ids is None:
            live.out_ids = self._out_ids.take(live.req.output_len)
        return live.out_ids

    def _abort(self, live: _Live) -> None:
        self.aborted.append(live.req.request_id)


def _chain(*parts: Iterable[Request]) -> Iterator[Request]:
    for part in parts:
        yield from part
