"""SGLang-like batch formation: prefill-first rounds over the shared queue (fcfs, klpm, lpm, hrrn, spf, lpm-aging)
or SGLang's own pass (``sglang:`` orders, ``sim/sglang_pass.py``).

As SGLang's ``Scheduler.get_next_batch_to_run``: every iteration, if requests wait and memory allows, run a
prefill round — the policy orders the waiting queue (the shared k-LPM queue) and requests are admitted in that
order while the chunked-prefill token budget and the KV capacity allow; a prompt longer than the budget left is
chunked and continues first in the next round; every admitted prompt is inserted in the cache at once, so requests
of one round that share an uncached prefix compute it once. Otherwise run decode steps for every running request.

Time advances by events, not tokens: between two events (an arrival, a completion, memory running out, the
caller's horizon, a waiting request becoming admissible) the decode steps of a fixed batch are advanced in one
go with closed-form durations (``step_time.DecodeRun``). Every running request gets a token every step, so a
request's progress is the engine's step count since it joined (``join_step``): nothing per request per step.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from typing import TYPE_CHECKING

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.orders import queue_order
from schedctl.policies.spec import KLPMSpec, PolicySpec
from schedctl.sim.sglang_pass import SGLangPassQueue
from schedctl.sim.step_time import DecodeRun, StepBatch

if TYPE_CHECKING:
    from schedctl.sim.engine import SimEngine, _Live


class SGLangBatcher:
    def __init__(self, engine: SimEngine, spec: PolicySpec) -> None:
        self.eng = engine
        self.queue: KLPMQueue[_Live] | SGLangPassQueue[_Live] = self._make_queue(spec)
        engine.cache.add_insert_listener(self.queue.on_cache_insert)
        self._chunked: _Live | None = None
        self._finish_heap: list[tuple[int, int]] = []  # (decode step at which it finishes, seq)
        self._fresh: dict[int, _Live] = {}  # running requests whose last token came from a prefill
        self._common = 0  # running requests whose last token came from the last decode step
        self._last_decode_end_s = 0.0
        self._prefilled_tokens = 0  # prefill tokens computed so far: hrrn's clock

    # -- the Batcher protocol ------------------------------------------------------------------------------
    def push(self, live: _Live) -> None:
        self.queue.push(live, live.seq, tokens=live.tokens)

    def _effective(self, spec: PolicySpec) -> KLPMSpec:
        """The order the engine runs: under ``sglang_lpm`` (SGLang without the plugin) fcfs, lpm, hrrn and spf are
        SGLang's own (their ``sglang:`` forms, one implementation); anything else as it is."""
        if not isinstance(spec, KLPMSpec):
            raise TypeError(f"{spec.kind} is not a queue-ordering policy")
        cfg = self.eng.cfg
        if (cfg.sglang_lpm and not cfg.sglang_plugin_order and not spec.sglang and spec.k in (1, None)
                and not spec.aging_tokens_per_pass):
            return spec.model_copy(update={"sglang": True})
        return spec

    def _make_queue(self, spec: PolicySpec) -> KLPMQueue[_Live] | SGLangPassQueue[_Live]:
        """SGLang's pass for ``sglang:`` orders and under ``sglang_plugin_order``, else the shared queue."""
        eff = self._effective(spec)
        if eff.sglang or self.eng.cfg.sglang_plugin_order:
            return SGLangPassQueue(eff, oracle=self.eng.cache, plugin=self.eng.cfg.sglang_plugin_order)
        return KLPMQueue(queue_order(eff), oracle=self.eng.cache)

    def set_policy(self, spec: PolicySpec) -> None:
        new = self._make_queue(spec)
        if isinstance(self.queue, SGLangPassQueue) and isinstance(new, SGLangPassQueue):
            self.queue.set_policy(new.spec)
            return
        if isinstance(self.queue, KLPMQueue) and isinstance(new, KLPMQueue):
            self.queue.set_order(new.order)
            return
        old = self.queue  # a switch between SGLang's pass order and the k-LPM queue: move the waiting requests
        for live in sorted(old.items(), key=lambda live: live.seq):
            new.push(live, live.seq, tokens=live.tokens)
        self.eng.cache.remove_insert_listener(old.on_cache_insert)
        self.eng.cache.add_insert_listener(new.on_cache_insert)
        self.queue = new

    def close(self) -> None:
        self.eng.cache.remove_insert_listener(self.queue.on_cache_insert)

    @property
    def queue_len(self) -> int:
        return len(self.queue) + (1 if self._chunked is not None else 0)

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or self._chunked is not None

    def step(self, until_s: float) -> bool:
        if (self.queue or self._chunked is not None) and self._prefill_round():
            return True
        if self.eng.running_set:
            self._decode(until_s)
            return True
        return False

    # -- prefill -------------------------------------------------------------------------------------------
    def _prefill_round(self) -> bool:
        e = self.eng
        budget = e.cfg.chunked_prefill_tokens
        batch: list[tuple[_Live, int, int]] = []  # (request, new tokens, cached context)
        e.cache.round += 1  # what this round's admissions insert is not cached to each other under sglang_lpm
        chunked, self._chunked = self._chunked, None
        candidates = [chunked] if chunked is not None else []
        if self.queue and (chunked is not None or len(e.running_set) < e.cfg.max_running_requests):
            # scheduler.py: calc_priority runs unless the running cap stops the pass; its clocks are the passes
            # (lpm-aging) and the prefill tokens run so far (hrrn's processed_tokens_counter)
            self.queue.begin_pass(self._prefilled_tokens)
        while budget > 0 and (candidates or self.queue):
            if not candidates and len(e.running_set) + len(batch) >= e.cfg.max_running_requests:
                break
            live = candidates.pop() if candidates else self.queue.peek()
            assert live is not None
            if not e._admit(live, budget, batch):
                if live is chunked:
                    self._chunked = chunked  # keeps its lock and progress; tries again next round
                elif not e.running_set and not batch and self._chunked is None:
                    e._abort(self.queue.pop())  # cannot fit even in an empty engine
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
        e.now_s += e.model.step_s(StepBatch.of([(n, c) for _l, n, c in batch]))
        self._prefilled_tokens += sum(n for _l, n, _c in batch)  # SGLang adds each batch's extend_num_tokens
        e.prefill_steps += 1
        for live, _n, _c in batch:
            if live.done_tokens == len(live.tokens) and e._emit_prefill_token(live):
                self._join(live)
        return True

    def _join(self, live: _Live) -> None:
        e = self.eng
        seq = live.seq
        self._fresh[seq] = live
        live.join_step = e.decode_steps
        live.join_ctx = len(live.tokens)
        left = live.req.output_len - live.generated
        e.running_set.join(live, live.join_ctx, left)
        heapq.heappush(self._finish_heap, (e.decode_steps + left, seq))

    # -- decode --------------------------------------------------------------------------------------------
    def _decode(self, until_s: float) -> None:
        e = self.eng
        running = e.running_set.requests
        batch = len(running)
        heap = self._finish_heap
        while heap[0][1] not in running or self._finish_step(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: retracted since
        limit = min(heap[0][0] - e.decode_steps, e.cache.available_tokens // batch)
        if limit <= 0:
            self._retract_newest()
            return
        limit = min(limit, e.cfg.max_decode_run_steps or limit)
        if self.queue or self._chunked is not None:
            live = self._chunked if self._chunked is not None else self.queue.peek()
            capped = batch >= e.cfg.max_running_requests
            limit = e._steps_until_admissible(live, e.cfg.chunked_prefill_tokens, batch, limit, capped)
        run = e.model.decode_run(batch, e.running_set.ctx_tokens)
        horizon = min(e.next_arrival_s, until_s)
        n = run.steps_to_reach(horizon - e.now_s, limit) if horizon < math.inf else limit
        e.cache.make_room(n * batch)
        e.cache.inflight_tokens += n * batch
        first_end = e.now_s + run.step_s(0)
        if e.tbt_classes is not None:
            self._tbt_by_class(run, n, first_end)
        if self._common:
            e.tbt.add(first_end - self._last_decode_end_s, self._common)
        for live in self._fresh.values():
            e.tbt.add(first_end - live.last_token_s)
        e.tbt.add_run(run, 1, n, batch)
        if e.cfg.token_times:
            t, times = e.now_s, []
            for j in range(n):
                t += run.step_s(j)
                times.append(t)
            for live in running.values():
                assert live.times is not None
                live.times.extend(times)
        e.now_s += run.total_s(n)
        e.decode_steps += n
        e.running_set.advance(n, batch)
        self._last_decode_end_s = e.now_s
        self._common = batch
        self._fresh.clear()
        while heap and heap[0][0] <= e.decode_steps:
            step, seq = heapq.heappop(heap)
            done = running.get(seq)
            if done is not None and self._finish_step(seq) == step:
                self._leave_decode(done)
                e._finish(done)

    def _tbt_by_class(self, run: DecodeRun, n: int, first_end: float) -> None:
        """The gaps of this run, per SLO class (``_common`` is the running requests not in ``_fresh``)."""
        e = self.eng
        counts = Counter(live.req.slo_class for live in e.running_set.requests.values())
        fresh = Counter(live.req.slo_class for live in self._fresh.values())
        for slo_class, count in counts.items():
            hist = e._class_tbt(slo_class)
            if count > fresh[slo_class]:
                hist.add(first_end - self._last_decode_end_s, count - fresh[slo_class])
            hist.add_run(run, 1, n, count)
        for live in self._fresh.values():
            e._class_tbt(live.req.slo_class).add(first_end - live.last_token_s)

    def _finish_step(self, seq: int) -> int:
        live = self.eng.running_set.requests[seq]
        return live.join_step + live.req.output_len - live.generated

    def _leave_decode(self, live: _Live) -> None:
        """Take a running request out of the decode batch and settle what it generated there.

        While a request decodes, ``generated`` holds its count at join; the steps since then are added here.
        """
        e = self.eng
        if self._fresh.pop(live.seq, None) is None:
            self._common -= 1
        steps = e.decode_steps - live.join_step
        e.running_set.leave(live, live.join_ctx + steps, live.req.output_len - live.generated - steps)
        e.cache.inflight_tokens -= steps
        live.generated += steps

    def _retract_newest(self) -> None:
        live = self.eng.running_set.newest()
        seq = live.seq
        was_fresh = seq in self._fresh
        self._leave_decode(live)
        live.last_token_s = live.last_token_s if was_fresh else self._last_decode_end_s
        self.eng._requeue(live)
