"""Token-budget batch formation: one hybrid batch (decode tokens + prefill chunks) per iteration (sarathi, slai, rad).

Every iteration the policy's rules (``policies/slai.py``, ``policies/rad.py``) pick the decodes and prefill chunks of
one batch under the token budget; the engine's admission (``SimEngine._admit``) decides whether a chunk fits in
memory, and a prefill chunk costs (and counts against the budget) only its tokens past the cached prefix. Order
inside an iteration: the decodes that go before prefills (Sarathi: all; SLAI: the critical ones; RAD: those of a
decode batch) get their KV first — if memory cannot hold them, the newest running request is retracted and the
iteration is formed again; then partial prefills (admission order), then new prefills (the policy's order, at most
``max_running_requests`` in flight, admission stops at the first that does not fit); then SLAI's leftover
decodes, as far as the budget, the decode cap and memory allow. As in vLLM (which Sarathi-Serve and the SLAI
prototype build on), a new request is admitted only if memory holds its whole uncached prompt, not just the first
chunk; the engine's reserve for future outputs (``new_token_ratio``) applies on top — set it to 0 for vLLM's
behaviour (no reserve; out of memory, the newest request is preempted and later recomputed).

A decode left out of an iteration keeps its last-token time, so its next gap includes the stall: TBT is per token
of each request, from its own previous token. The iteration's duration is the step-time model's for its features.

Runs of identical decode-only iterations are advanced in bulk (``step_time.DecodeRun``) when nothing can change the
batch: every running decode fits the budget (and SLAI's decode cap), so each iteration takes all of them whatever
their deadlines, and no prefill work can be admitted — none waits, or the first in line does not fit even with the
smallest budget an iteration could leave it (admission only gets harder as decodes grow, except while the reserve
share decays after a retraction: then the run stops where it would fit; and the run evicts nothing from the cache
while prefill work waits, so the check stays exact). A run also stops at the first completion, when memory runs
out, and at the step during which the next arrival or the caller's horizon falls. ``max_decode_run_steps=1``
turns bulk advancement off: the step-by-step reference.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schedctl.policies import rad, slai
from schedctl.policies.spec import PolicySpec, RADSpec, SarathiSpec, SLAISpec
from schedctl.sim.step_time import StepBatch

if TYPE_CHECKING:
    from schedctl.sim.engine import SimEngine, _Live

Key = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class IterationRecord:
    """One iteration (``steps`` > 1: a bulk run of that many identical ones), kept with ``trace_iterations``."""

    start_s: float
    end_s: float
    steps: int
    budget_tokens: int
    decode_ids: tuple[int, ...]  # requests that got a decode token
    decoding: tuple[tuple[int, float, str], ...]  # every decoding request at the start: (id, last token s, class)
    critical_ids: tuple[int, ...]  # SLAI: the decodes found critical
    prefill: tuple[tuple[int, int, int], ...]  # (request id, new tokens, cached tokens)
    admitted_ids: tuple[int, ...]  # new prefills admitted from the waiting queue, in order
    waiting_head_id: int | None  # the first request left waiting after admission
    theta: float  # SLAI's Θ this iteration (nan for the others)
    mean_batch_s: float
    kv_utilization: float

    @property
    def tokens(self) -> int:
        return len(self.decode_ids) + sum(n for _i, n, _c in self.prefill)


class HybridBatcher:
    def __init__(self, engine: SimEngine, spec: PolicySpec) -> None:
        self.eng = engine
        self._waiting: list[tuple[Key, _Live]] = []  # heap by the policy's prefill order
        self._partials: list[_Live] = []  # admitted, prompt not all prefilled yet; admission order
        self.batches = 0  # iterations run, and their total duration (SLAI's mean batch duration)
        self.batch_time_s = 0.0
        self._cycle_prefills = 0  # RAD: prefill-only batches in the current cycle
        self.iterations: list[IterationRecord] | None = [] if engine.cfg.trace_iterations else None
        self._admitted: list[int] = []  # requests admitted by the last admission pass (records)
        self._order = ("fcfs", False)
        self.set_policy(spec)

    # -- the Batcher protocol ------------------------------------------------------------------------------
    def set_policy(self, spec: PolicySpec) -> None:
        """Cheap: knobs apply from the next iteration (the waiting queue is re-sorted only if its order changed)."""
        assert isinstance(spec, SarathiSpec | SLAISpec | RADSpec)
        self.spec = spec
        self._budget = spec.token_budget
        self._tbt: dict[str, float] = {}
        order = ("fcfs", False)
        if isinstance(spec, SLAISpec):
            order = (spec.prefill_order, spec.strict_first)
            self._tbt = {c: slai.tbt_slo_s(spec, c) for c in slai.TBT_CLASSES}
        if isinstance(spec, RADSpec):
            self._tile = spec.tile_tokens or self.eng.cfg.tile_tokens or rad.DEFAULT_TILE_TOKENS
            self._budget = rad.tiled_budget(spec.token_budget, self._tile)
        if order != self._order:
            self._order = order
            self._waiting = [(self._key(live), live) for _k, live in self._waiting]
            heapq.heapify(self._waiting)

    def push(self, live: _Live) -> None:
        if self._tbt and live.req.slo_class not in self._tbt:
            raise ValueError(f"request {live.req.request_id}: slo_class {live.req.slo_class!r} is not a TBT class "
                             f"SLAI knows ({', '.join(slai.TBT_CLASSES)})")
        heapq.heappush(self._waiting, (self._key(live), live))

    def close(self) -> None:
        pass

    @property
    def queue_len(self) -> int:
        return len(self._waiting) + len(self._partials)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._partials)

    @property
    def mean_batch_s(self) -> float:
        return self.batch_time_s / self.batches if self.batches else 0.0

    def step(self, until_s: float) -> bool:
        if not (self.eng.running_set.requests or self._waiting or self._partials):
            return False
        return self._bulk(until_s) or self._iterate()

    def _key(self, live: _Live) -> Key:
        order, strict_first = self._order
        return slai.prefill_key(order, strict_first, len(live.req.prompt), live.req.slo_class, live.seq,
                                live.retractions > 0)

    # -- one iteration -------------------------------------------------------------------------------------
    def _iterate(self) -> bool:
        e, spec, budget = self.eng, self.spec, self._budget
        start_s, kv, mean_s = e.now_s, e.kv_utilization, self.mean_batch_s
        first = list(e.running_set.requests.values())  # the decodes that get their token before any prefill
        rest: list[_Live] = []  # SLAI: the non-critical decodes, in deadline order
        chunks: list[tuple[_Live, int, int]] = []
        theta = math.nan
        critical: tuple[int, ...] = ()
        if isinstance(spec, SLAISpec):
            theta = slai.theta(spec, kv)
            first.sort(key=lambda d: (d.last_token_s + self._tbt[d.req.slo_class], d.seq))
            deadlines = [d.last_token_s + self._tbt[d.req.slo_class] for d in first]
            before_s = slai.critical_before_s(spec, start_s, kv, mean_s)
            k = slai.critical_count(deadlines, before_s, min(spec.decode_cap, budget))
            first, rest = first[:k], first[k:]
            critical = tuple(d.req.request_id for d in first)
        elif isinstance(spec, RADSpec):
            phase = rad.next_phase(self._cycle_prefills, spec.prefill_batches_per_cycle, bool(first),
                                   bool(self._waiting or self._partials))
            if phase == "prefill":
                self._admit_prefills(budget, chunks)
            if chunks:
                first = []  # a prefill-only batch
        if len(first) > budget:  # a decode batch larger than the budget: least recently served first
            first = sorted(first, key=lambda d: (d.last_token_s, d.seq))[:budget]
        cache = e.cache
        if len(first) > cache.available_tokens:
            self._retract_newest()  # memory cannot hold the decodes that must run: form the iteration again
            return True
        cache.make_room(len(first))
        cache.inflight_tokens += len(first)
        if isinstance(spec, RADSpec):
            if first:
                self._admit_prefills(rad.tile_filler(len(first), self._tile, budget), chunks)
        else:
            left = self._admit_prefills(budget - len(first), chunks)
            if rest and isinstance(spec, SLAISpec):
                extra = slai.leftover_decodes(len(first) + len(rest), len(first), left, spec.decode_cap)
                extra = min(extra, cache.available_tokens)
                cache.make_room(extra)
                cache.inflight_tokens += extra
                first += rest[:extra]
        if not first and not chunks:
            if e.running_set.requests:
                self._retract_newest()  # no memory even for one decode token
                return True
            return False
        self._run_batch(first, chunks, start_s, kv, mean_s, theta, critical)
        if isinstance(spec, RADSpec):
            self._cycle_prefills = self._cycle_prefills + 1 if chunks and not first else 0
        return True

    def _admit_prefills(self, budget: int, chunks: list[tuple[_Live, int, int]]) -> int:
        """Partial prefills, then new ones in the policy's order, while budget, memory and the cap allow."""
        e = self.eng
        self._admitted = []
        for live in self._partials:
            if budget <= 0 or not e._admit(live, budget, chunks):
                return budget  # head of line: nothing overtakes a partial prefill that does not fit
            budget -= chunks[-1][1]
        in_flight = len(e.running_set.requests) + len(self._partials)
        while budget > 0 and self._waiting and in_flight < self.spec.max_running_requests:
            live = self._waiting[0][1]
            too_long = len(live.tokens) > e.cache.capacity_tokens
            if too_long or not e._admit(live, budget, chunks, whole_prompt=True):
                if too_long or not (e.running_set.requests or chunks or self._partials):
                    heapq.heappop(self._waiting)
                    e._abort(live)  # cannot fit even in an empty engine
                    continue
                break
            heapq.heappop(self._waiting)
            self._admitted.append(live.req.request_id)
            in_flight += 1
            budget -= chunks[-1][1]
            if live.done_tokens < len(live.tokens):
                self._partials.append(live)  # the budget ran out inside this prompt
        return budget

    def _run_batch(self, decodes: list[_Live], chunks: list[tuple[_Live, int, int]], start_s: float, kv: float,
                   mean_s: float, theta: float, critical: tuple[int, ...]) -> None:
        e = self.eng
        n = len(decodes)
        rs = e.running_set
        ctx = rs.ctx_tokens if n == len(rs.requests) else sum(d.join_ctx + d.decoded for d in decodes)
        new, seqs, attn, kv_tokens, prefill_ctx = n, n, ctx + n, ctx + n, 0
        for _live, take, cached in chunks:
            new, seqs = new + take, seqs + 1
            attn += take * cached + take * (take + 1) // 2
            kv_tokens += cached + take
            prefill_ctx += cached
        dt = e.model.step_s(StepBatch(new, seqs, attn, kv_tokens, len(chunks), prefill_ctx))
        decoding = self._snapshot()
        e.now_s = now = start_s + dt
        self.batches += 1
        self.batch_time_s += dt
        if chunks:
            e.prefill_steps += 1
        else:
            e.decode_steps += 1
        gaps: dict[tuple[float, str], int] = {}
        for d in decodes:
            gap_key = (d.last_token_s, d.req.slo_class)
            gaps[gap_key] = gaps.get(gap_key, 0) + 1
            d.generated += 1
            d.decoded += 1
            d.last_token_s = now
            if d.times is not None:
                d.times.append(now)
        for (last_s, slo_class), count in gaps.items():
            e._add_tbt(now - last_s, count, slo_class)
        e.running_set.advance(1, n)
        self._finish_done(decodes)
        for live, _take, _cached in chunks:
            if live.done_tokens == len(live.tokens):
                if self._partials and live in self._partials:
                    self._partials.remove(live)
                if e._emit_prefill_token(live):
                    self._join(live)
        if decoding is not None:
            self._record(start_s, 1, decodes, chunks, decoding, kv, mean_s, theta, critical)

    # -- bulk runs of decode-only iterations ---------------------------------------------------------------
    def _bulk(self, until_s: float) -> bool:
        e, spec = self.eng, self.spec
        running = e.running_set.requests
        batch = len(running)
        if batch == 0 or e.cfg.max_decode_run_steps == 1 or batch > self._budget:
            return False
        if isinstance(spec, SLAISpec) and batch > spec.decode_cap:
            return False
        cache = e.cache
        limit = min(min(d.req.output_len - d.generated for d in running.values()), cache.available_tokens // batch)
        limit = min(limit, e.cfg.max_decode_run_steps or limit)
        head = self._partials[0] if self._partials else (self._waiting[0][1] if self._waiting else None)
        if head is not None and limit > 0:
            capped = len(running) + len(self._partials) >= spec.max_running_requests
            for budget, reserved in self._head_budgets(batch):
                if budget <= 0:
                    continue
                budget = budget if head.node is not None else len(head.tokens)  # a fresh one needs its whole prompt
                if self._fits(head, budget, reserved, capped):
                    return False  # an iteration could admit it: form iterations one by one
                limit = e._steps_until_admissible(head, budget, batch, limit, capped, reserved)
            limit = min(limit, cache.free_tokens // batch)  # evict nothing while prefill work waits
        if limit <= 0:
            return False
        self._advance(limit, until_s)
        return True

    def _head_budgets(self, batch: int) -> list[tuple[int, int]]:
        """(budget, decode tokens allocated before it) an iteration could leave the first prefill in line.

        The smallest positive budget is the easiest to fit (a chunk needs its tokens), so checking it is enough.
        """
        spec, budget = self.spec, self._budget
        if isinstance(spec, RADSpec):
            return [(budget, 0), (rad.tile_filler(batch, self._tile, budget), batch)]
        if isinstance(spec, SLAISpec):
            return [(max(1, budget - batch), 0)]  # the critical decodes allocate first: none, at the easiest
        return [(budget - batch, batch)]

    def _fits(self, live: _Live, budget: int, reserved: int, capped: bool) -> bool:
        e = self.eng
        if budget <= 0 or (live.node is None and capped):
            return False
        if live.node is None:
            cached, pinned = e.cache.prefix_unlocked(live.tokens, len(live.tokens) - 1)
        else:
            cached, pinned = live.done_tokens, 0
        need = e._need(live, cached, budget, True, e.running_set.ratio, e.running_set.remaining_tokens)
        return need <= e.cache.available_tokens - pinned - reserved

    def _advance(self, limit: int, until_s: float) -> None:
        """Run up to ``limit`` decode-only iterations of every running decode at once (closed-form durations)."""
        e = self.eng
        decodes = list(e.running_set.requests.values())
        batch = len(decodes)
        run = e.model.decode_run(batch, e.running_set.ctx_tokens)
        horizon = min(e.next_arrival_s, until_s)
        n = run.steps_to_reach(horizon - e.now_s, limit) if horizon < math.inf else limit
        start_s, kv, mean_s = e.now_s, e.kv_utilization, self.mean_batch_s
        decoding = self._snapshot()
        e.cache.make_room(n * batch)
        e.cache.inflight_tokens += n * batch
        first_end = start_s + run.step_s(0)
        end = start_s + run.total_s(n)
        gaps: dict[tuple[float, str], int] = {}
        classes: dict[str, int] = {}
        times = None
        if e.cfg.token_times:
            t, times = start_s, []
            for j in range(n):
                t += run.step_s(j)
                times.append(t)
        for d in decodes:
            gap_key = (d.last_token_s, d.req.slo_class)
            gaps[gap_key] = gaps.get(gap_key, 0) + 1
            classes[d.req.slo_class] = classes.get(d.req.slo_class, 0) + 1
            d.generated += n
            d.decoded += n
            d.last_token_s = end
            if d.times is not None and times is not None:
                d.times.extend(times)
        for (last_s, slo_class), count in gaps.items():
            e._add_tbt(first_end - last_s, count, slo_class)
        e.tbt.add_run(run, 1, n, batch)
        if e.tbt_classes is not None:
            for slo_class, count in classes.items():
                e._class_tbt(slo_class).add_run(run, 1, n, count)
        e.now_s = end
        e.decode_steps += n
        self.batches += n
        self.batch_time_s += run.total_s(n)
        self._cycle_prefills = 0
        e.running_set.advance(n, batch)
        self._finish_done(decodes)
        if decoding is not None:
            theta = slai.theta(self.spec, kv) if isinstance(self.spec, SLAISpec) else math.nan
            self._admitted = []
            self._record(start_s, n, decodes, [], decoding, kv, mean_s, theta, ())

    # -- joining and leaving the decode batch --------------------------------------------------------------
    def _join(self, live: _Live) -> None:
        e = self.eng
        live.join_ctx = len(live.tokens)
        live.decoded = 0
        e.running_set.join(live, live.join_ctx, live.req.output_len - live.generated)

    def _leave(self, live: _Live) -> None:
        e = self.eng
        e.cache.inflight_tokens -= live.decoded
        e.running_set.leave(live, live.join_ctx + live.decoded, live.req.output_len - live.generated)
        live.decoded = 0

    def _finish_done(self, decodes: list[_Live]) -> None:
        """Finish the decodes that produced their last token, in arrival order (whatever order they ran in)."""
        done = [d for d in decodes if d.generated >= d.req.output_len]
        done.sort(key=lambda d: d.seq)
        for d in done:
            self._leave(d)
            self.eng._finish(d)

    def _retract_newest(self) -> None:
        live = self.eng.running_set.newest()
        self._leave(live)
        self.eng._requeue(live)  # keeps its last-token time: the stall shows in its next gap

    # -- iteration records (tests) -------------------------------------------------------------------------
    def _snapshot(self) -> tuple[tuple[int, float, str], ...] | None:
        if self.iterations is None:
            return None
        running = self.eng.running_set.requests.values()
        return tuple((d.req.request_id, d.last_token_s, d.req.slo_class) for d in running)

    def _record(self, start_s: float, steps: int, decodes: list[_Live], chunks: list[tuple[_Live, int, int]],
                decoding: tuple[tuple[int, float, str], ...], kv: float, mean_s: float, theta: float,
                critical: tuple[int, ...]) -> None:
        assert self.iterations is not None
        self.iterations.append(IterationRecord(
            start_s=start_s, end_s=self.eng.now_s, steps=steps, budget_tokens=self._budget,
            decode_ids=tuple(d.req.request_id for d in decodes), decoding=decoding, critical_ids=critical,
            prefill=tuple((live.req.request_id, take, cached) for live, take, cached in chunks),
            admitted_ids=tuple(self._admitted),
            waiting_head_id=self._waiting[0][1].req.request_id if self._waiting else None,
            theta=theta, mean_batch_s=mean_s, kv_utilization=kv,
        ))
