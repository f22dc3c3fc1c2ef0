"""The embedded serving engine: continuous batching over a radix prefix cache, in simulated time.

This file is the engine's core: the event loop, arrivals, the KV cache and admission, retraction, the records and
the time-between-tokens (TBT) accounting. How a batch is formed is a separate piece, chosen by the policy's family
(:func:`schedctl.policies.spec.is_token_budget`):

* SGLang-like prefill-first rounds (``sim/batching.py``; fcfs, lpm, klpm): a prefill round when requests wait and
  memory allows, otherwise decode steps of every running request; decode steps between events advanced in bulk.
* token-budget hybrid iterations (``sim/hybrid.py``; sarathi, slai, rad): every iteration one batch of decode
  tokens and prefill chunks under a token budget; runs of identical decode-only iterations advanced in bulk.

Shared by both. Admission: a prompt's cached prefix is locked, only its uncached tokens are computed (and count
against a budget), and its last token is always recomputed (its logits give the first output token), as in SGLang.
Admission reserves KV for a share (``new_token_ratio``) of the outputs still to come; when decodes cannot get a
token each, the newest running request is retracted to the waiting queue (its KV freed, its prompt left in the
cache) and the reserve share is raised, then decays back by ``token_ratio_decay_per_step`` per step. A request
that can never fit is aborted. KV utilisation is SGLang's ``token_usage``: KV held by requests in flight, not the
evictable cached prefixes (those are free memory to a new request).

TBT is measured per token of each request: the gap from its previous token, stalls included (a decode left out of
an iteration, a retraction), so a request's gaps add up to its time from first to last token. Gaps go to a
histogram (``tbt``) and, with ``tbt_by_class``, to one per SLO class (``tbt_classes``). Per request the engine
records arrival, first token, finish, prompt and cached tokens, and (``record_token_times``) every token's time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from schedctl.policies.spec import FCFSSpec, PolicySpec, is_token_budget, policy_label
from schedctl.sim.config import EngineConfig as EngineConfig
from schedctl.sim.config import sglang_engine_config as sglang_engine_config
from schedctl.sim.radix_cache import KVNode, RadixKVCache
from schedctl.sim.records import RequestLog, RequestRow, TBTHistogram
from schedctl.sim.running import RunningSet, sglang_reserve_shares
from schedctl.sim.step_time import StepTimeModel
from schedctl.tokens import SYNTHETIC_TOKEN_BASE, IdAllocator, TokenArray
from schedctl.workloads.types import Request

# Synthetic output ids live above the workloads' synthetic prompt ids so they never collide.
_OUTPUT_TOKEN_BASE = SYNTHETIC_TOKEN_BASE << 16


class PolicyFamilyError(ValueError):
    """A switch between the queue-ordering and the token-budget families while requests are in flight."""


class _Live:
    """A request inside the engine (waiting, being prefilled, or decoding)."""

    __slots__ = ("cached_tokens", "decoded", "done_tokens", "first_token_s", "generated", "join_ctx", "join_step",
                 "last_token_s", "node", "out_ids", "req", "retractions", "seq", "times", "tokens")

    def __init__(self, req: Request, seq: int, record_times: bool) -> None:
        self.req = req
        self.seq = seq  # arrival order
        self.tokens: TokenArray = req.prompt  # what (re)prefill must put in the KV cache
        self.done_tokens = 0  # how many of `tokens` are in the cache (chunked prefill progress)
        self.node: KVNode | None = None  # the cache node this request holds a lock on
        self.generated = 0  # output tokens emitted (SGLang mode: the count at join while it decodes)
        self.cached_tokens = -1  # prompt tokens found cached at first admission
        self.first_token_s = math.nan
        self.last_token_s = math.nan
        self.retractions = 0
        self.join_step = 0  # SGLang mode: engine decode-step count when it (re)joined the decode batch
        self.join_ctx = 0  # its KV tokens when it (re)joined the decode batch
        self.decoded = 0  # hybrid mode: tokens decoded since it (re)joined (their KV is in flight)
        self.out_ids: TokenArray | None = req.output_tokens
        self.times: list[float] | None = [] if record_times else None


class Batcher(Protocol):
    """Batch formation: owns the waiting queue and the partly prefilled requests; the engine owns the rest."""

    def push(self, live: _Live) -> None: ...  # a waiting request: an arrival, or a retracted one
    def step(self, until_s: float) -> bool: ...  # run one batch (or a bulk run); False: nothing could run
    def set_policy(self, spec: PolicySpec) -> None: ...
    def close(self) -> None: ...  # detach from the engine (a family switch)
    @property
    def queue_len(self) -> int: ...  # waiting + partly prefilled
    @property
    def has_work(self) -> bool: ...  # anything waiting or partly prefilled


class SimEngine:
    def __init__(
        self, config: EngineConfig, step_model: StepTimeModel, kv_capacity_tokens: int,
        policy: PolicySpec | None = None, requests: Iterable[Request] = (),
    ) -> None:
        self.cfg = config
        self.model = step_model
        self.cache = RadixKVCache(kv_capacity_tokens)
        self.policy: PolicySpec = policy or FCFSSpec()
        self.now_s = 0.0
        self.completed = RequestLog(keep_token_times=config.record_token_times)
        self.tbt = TBTHistogram()
        self.tbt_classes: dict[str, TBTHistogram] | None = {} if config.tbt_by_class else None
        self.first_token_times: list[tuple[float, float]] = []  # (arrival_s, first_token_s), drained by adapters
        # stream_tokens: the requests taken in, by request id, for a caller that streams their tokens (it pops them)
        self.streams: dict[int, _Live] | None = {} if config.stream_tokens else None
        self.arrivals = 0
        self.aborted: list[int] = []  # request ids that can never fit in the KV cache
        self.prefill_steps = 0  # batches with prefill work
        self.decode_steps = 0  # decode-only steps
        self.retractions = 0
        self._source: Iterator[Request] = iter(())
        self._next: Request | None = None
        self.running_set = RunningSet(config)  # the decoding requests and their KV accounting
        self._out_ids = IdAllocator(_OUTPUT_TOKEN_BASE)
        self._batcher: Batcher = self._make_batcher(self.policy)
        self.add_requests(requests)

    def _make_batcher(self, spec: PolicySpec) -> Batcher:
        if is_token_budget(spec):
            from schedctl.sim.hybrid import HybridBatcher

            return HybridBatcher(self, spec)
        from schedctl.sim.batching import SGLangBatcher

        return SGLangBatcher(self, spec)

    # -- inputs --------------------------------------------------------------------------------------------
    def add_requests(self, requests: Iterable[Request]) -> None:
        """Queue more arrivals (sorted by arrival time) after the ones already pending."""
        pending = [self._next] if self._next is not None else []
        rest = self._source
        self._source = iter(_chain(pending, rest, requests))
        self._next = next(self._source, None)

    def set_policy(self, spec: PolicySpec) -> None:
        """Change the policy; it applies from the next batch.

        Within a family this is cheap (a retuned SLAI Θ or TBT slack takes effect at the next iteration). A switch
        between the queue-ordering and token-budget families is allowed only while no request is in flight
        (their batchers keep different per-request bookkeeping); otherwise :class:`PolicyFamilyError`.
        """
        if is_token_budget(spec) != is_token_budget(self.policy):
            if self.running_set or self._batcher.has_work:
                raise PolicyFamilyError(
                    f"cannot switch from {self.policy.kind} to {policy_label(spec)} while requests are in flight: the "
                    "queue-ordering (fcfs/lpm/klpm) and token-budget (sarathi/slai/rad) families form batches "
                    "differently; switch within a family, or before the first arrival"
                )
            self._batcher.close()
            self.policy = spec
            self._batcher = self._make_batcher(spec)
            return
        self.policy = spec
        self._batcher.set_policy(spec)

    def set_conservativeness(self, value: float) -> None:
        """Change ``schedule_conservativeness`` while running, as the SGLang plugin does (``reserve.py``): the reserve
        share's init, floor and decay are rebuilt from it (SGLang's tracker), the share now is scaled by new init /
        old init and clipped; admission uses it from the next batch. With ``fixed_length_outputs`` the share stays 1.
        """
        shares = sglang_reserve_shares(value, self.cfg.fixed_length_outputs)  # ValueError: not > 0
        self.cfg = self.cfg.model_copy(update={**shares, "schedule_conservativeness": float(value)})
        self.running_set.retune(self.cfg)

    # -- state ---------------------------------------------------------------------------------------------
    @property
    def queue_len(self) -> int:
        return self._batcher.queue_len

    @property
    def running(self) -> int:
        return len(self.running_set)

    @property
    def kv_utilization(self) -> float:
        """KV held by requests in flight (SGLang's token_usage): evictable cached prefixes count as free."""
        return 1.0 - self.cache.available_tokens / self.cache.capacity_tokens

    @property
    def new_token_ratio(self) -> float:
        """The share of the outputs still to come that admission reserves KV for, now."""
        return self.running_set.ratio

    @property
    def next_arrival_s(self) -> float:
        return self._next.arrival_s if self._next is not None else math.inf

    def done(self) -> bool:
        return self._next is None and not self._batcher.has_work and not self.running_set

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, until_s: float = math.inf, on_event: Callable[[SimEngine], None] | None = None) -> None:
        """Advance simulated time until ``until_s`` or until every request has finished."""
        while True:
            self._take_arrivals()
            if self.now_s >= until_s:
                return
            if not self._batcher.step(until_s):
                self.running_set.idle()
                if self._next is None:
                    return
                self.now_s = min(self._next.arrival_s, until_s)  # idle until the next arrival
            if on_event is not None:
                on_event(self)

    def _take_arrivals(self) -> None:
        while self._next is not None and self._next.arrival_s <= self.now_s:
            live = _Live(self._next, self.arrivals, self.cfg.token_times)
            if self.streams is not None:
                self.streams[live.req.request_id] = live
            self.arrivals += 1
            self._batcher.push(live)
            self._next = next(self._source, None)

    # -- admission (shared by the batchers) ----------------------------------------------------------------
    def _need(self, live: _Live, cached: int, budget: int, others: bool, ratio: float, remaining: int) -> int:
        """KV tokens admitting ``live``'s next chunk needs: the chunk, plus the reserve for outputs to come.

        An engine with nothing else running or admitted admits without a reserve, as SGLang does. SGLang's own
        scheduler reserves a request's whole output when its last chunk is admitted, whatever the share (the share
        applies to running requests only: ``PrefillAdder.add_one_req`` in ``srt/managers/schedule_policy.py``).
        """
        take = min(len(live.tokens) - cached, budget)
        if not others:
            return take
        reserve = math.ceil(ratio * remaining)
        if cached + take == len(live.tokens):
            own = 1.0 if self.cfg.sglang_scheduler else ratio
            reserve += math.ceil(own * (live.req.output_len - live.generated))
        return take + reserve

    def _admit(
        self, live: _Live, budget: int, batch: list[tuple[_Live, int, int]], whole_prompt: bool = False
    ) -> bool:
        """Lock the cached prefix, check memory, allocate the next chunk; False (nothing held) if it won't fit.

        A fresh request that does not fit leaves its prefix touched (locked and unlocked: most recently used), as
        in SGLang. With ``whole_prompt`` (vLLM-like, the hybrid mode) a fresh request must fit its whole uncached
        prompt, not only the first chunk, and the check runs before the lock, so a refusal changes nothing.
        """
        cache = self.cache
        tokens = live.tokens
        fresh = live.node is None
        others = bool(self.running_set or batch)
        rs = self.running_set
        if fresh and whole_prompt:
            cached, pinned = cache.prefix_unlocked(tokens, len(tokens) - 1)
            if self._need(live, cached, len(tokens), others, rs.ratio, rs.remaining_tokens) > (
                cache.available_tokens - pinned
            ):
                return False
        # SGLang matches a request against the tree as it was before this round (scheduler.py inserts a batch's KV
        # after its forward): requests of one batch that share an uncached prefix each compute it, and a chunked
        # request re-matches its prompt at its next chunk, picking up what others cached since (schedule_batch.py:
        # cached_tokens += pre_len - already_computed). The idealised engine shares a prefix within the round.
        sglang = self.cfg.sglang_scheduler and not whole_prompt
        own: KVNode | None = None  # a chunked request's own path, while a longer match is tried
        if fresh:
            node, cached = cache.lock_prefix(tokens, len(tokens) - 1)
            if sglang:
                node, cached = self._before_round(node, cached)
        else:
            assert live.node is not None
            node, cached = live.node, live.done_tokens
            if sglang:
                longer, longer_cached = self._before_round(*cache.lock_prefix(tokens, len(tokens) - 1))
                if longer_cached > cached:
                    own, node, cached = node, longer, longer_cached
                else:
                    cache.unlock(longer)
        need = self._need(live, cached, budget, others, rs.ratio, rs.remaining_tokens)
        if need > cache.available_tokens:
            if fresh or own is not None:
                cache.unlock(node)
            return False
        if own is not None:
            cache.unlock(own)
            live.cached_tokens += cached - live.done_tokens
            cache.record_lookup(0, cached - live.done_tokens)
        take = min(len(tokens) - cached, budget)
        if fresh and live.cached_tokens < 0:
            live.cached_tokens = cached
            cache.record_lookup(len(tokens), cached)
        cache.make_room(take)
        live.node = cache.extend_locked(node, tokens, cached + take)
        live.done_tokens = cached + take
        batch.append((live, take, cached))
        return True

    def _before_round(self, node: KVNode, cached: int) -> tuple[KVNode, int]:
        """The locked ``node`` (``cached`` deep) moved up to what was cached before this round (SGLang's match)."""
        earlier = self.cache.before_round(node)
        if earlier is node:
            return node, cached
        self.cache.lock(earlier)
        self.cache.unlock(node)
        return earlier, earlier.depth

    def _steps_until_admissible(
        self, live: _Live | None, budget: int, batch: int, limit: int, capped: bool, reserved: int = 0
    ) -> int:
        """Decode steps of ``batch`` requests after which ``live``'s next chunk fits (``limit`` if not within it).

        SGLang re-checks admission before every step. Decoding shrinks the free KV by one token per running request
        per step and the reserve by at most that times the reserve share, so a request that does not fit now
        will not fit later — unless the share is still decaying after a retraction. Only then is it scanned.
        ``capped``: the running-request cap stops a fresh admission anyway (until a completion, an event).
        ``reserved``: KV tokens allocated before the admission check (a hybrid iteration's decodes go first).
        """
        rs = self.running_set
        if live is None or rs.ratio <= self.cfg.new_token_ratio:
            return limit
        if live.node is None and capped:
            return limit
        if live.node is None:
            cached, pinned = self.cache.prefix_unlocked(live.tokens, len(live.tokens) - 1)
        else:
            cached, pinned = live.done_tokens, 0
        available = self.cache.available_tokens - pinned - reserved  # locking its prefix pins those
        decay, floor = self.cfg.token_ratio_decay_per_step, self.cfg.new_token_ratio
        for j in range(1, limit):
            ratio = max(floor, rs.ratio - j * decay)
            if self._need(live, cached, budget, True, ratio, rs.remaining_tokens - j * batch) <= available - j * batch:
                return j
        return limit

    # -- tokens, finishing, retraction (shared by the batchers) --------------------------------------------
    def _emit_prefill_token(self, live: _Live) -> bool:
        """The token a finished prefill produces; False if that finished the request."""
        now = self.now_s
        live.generated += 1
        if live.times is not None:
            live.times.append(now)
        if live.generated == 1:
            live.first_token_s = now
            self.first_token_times.append((live.req.arrival_s, now))
        else:
            self._add_tbt(now - live.last_token_s, 1, live.req.slo_class)  # after a retraction: the stall counts
        live.last_token_s = now
        if live.generated >= live.req.output_len:
            self._finish(live)
            return False
        return True

    def _add_tbt(self, gap_s: float, weight: float, slo_class: str) -> None:
        self.tbt.add(gap_s, weight)
        if self.tbt_classes is not None:
            self._class_tbt(slo_class).add(gap_s, weight)

    def _class_tbt(self, slo_class: str) -> TBTHistogram:
        assert self.tbt_classes is not None
        hist = self.tbt_classes.get(slo_class)
        if hist is None:
            hist = self.tbt_classes[slo_class] = TBTHistogram()
        return hist

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

    def _requeue(self, live: _Live) -> None:
        """Send a request that left the decode batch back to the waiting queue (a retraction)."""
        assert live.node is not None
        self.cache.unlock(live.node)
        live.node = None
        live.tokens = live.req.prompt + self._output_ids(live)[: live.generated]
        live.done_tokens = 0
        live.retractions += 1
        self.retractions += 1
        self.running_set.retracted()
        self._batcher.push(live)

    def _output_ids(self, live: _Live) -> TokenArray:
        if live.out_ids is None:
            live.out_ids = self._out_ids.take(live.req.output_len)
        return live.out_ids

    def _abort(self, live: _Live) -> None:
        self.aborted.append(live.req.request_id)


def _chain(*parts: Iterable[Request]) -> Iterator[Request]:
    for part in parts:
        yield from part
