"""The embedded simulator behind the EngineAdapter protocol, in simulated time.

``observe()`` advances the engine by one window (``window_s`` of simulated time) and returns that window, so
the shell that calls observe, step and apply once per tick runs the controller every ``window_s`` simulated
seconds — the same loop as against a real engine, only the clock differs. ``apply(spec)`` switches the engine's
policy at the current simulated instant; ``set_conservativeness(c)`` the admission reserve (SGLang's
``schedule_conservativeness``, the reserve tuner's knob), and each window reports the value the engine runs.

Per window: arrivals and completions (counter deltas), the TTFT of every request whose first token came in the
window (raw samples), the TBT histogram delta, the requests retracted, queue length, running requests, KV
utilisation, the prefix-cache hit rate of the prompts admitted in the window, the mean prompt length of the
completions, the active policy, and the age of the oldest request still waiting for its first token (tracked here:
the requests are fed to the engine through this adapter, and the engine reports each first token with its arrival
time).

Memory stays flat however long the run: first-token times are drained every window and, with ``trim_log``
(default), the engine's per-request log is emptied after each window (the sidecar does not need old rows; a
benchmark that does sets ``keep_ttfts`` and gets every TTFT in ``ttfts_s``).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import get_args

import numpy as np

from schedctl.engine_adapter.base import Capabilities, Observation, UnsupportedPolicy
from schedctl.policies.spec import PolicySpec
from schedctl.sim.engine import SimEngine
from schedctl.sim.records import RequestLog
from schedctl.stats import LatencyDist
from schedctl.workloads.types import Request


def _policy_kinds() -> frozenset[str]:
    union = get_args(PolicySpec)[0]
    return frozenset(str(m.model_fields["kind"].default) for m in get_args(union))


class SimAdapter:
    """EngineAdapter over a SimEngine fed with ``requests`` (sorted by arrival), one window per observe()."""

    def __init__(
        self, engine: SimEngine, requests: Iterable[Request], window_s: float, *, trim_log: bool = True,
        keep_ttfts: bool = False,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.engine = engine
        self.window_s = window_s
        self.trim_log = trim_log
        self.ttfts_s: array[float] | None = array("d") if keep_ttfts else None
        self.ttft_arrivals_s: array[float] | None = array("d") if keep_ttfts else None  # arrival of each ttfts_s
        self.now_s = engine.now_s  # the adapter's simulated clock (the engine's may lag when it is idle)
        self._fed: deque[tuple[float, int]] = deque()  # (arrival_s, request_id) of requests handed to the engine
        self._served: Counter[float] = Counter()  # arrival times of requests that got their first token
        self._gone: set[int] = set()  # aborted request ids
        self._exhausted = False
        self._arrivals = engine.arrivals
        self._completed = len(engine.completed)
        self._aborted = len(engine.aborted)
        self._hit, self._lookup = engine.cache.hit_tokens, engine.cache.lookup_tokens
        self._retractions = engine.retractions
        self.on_feed: Callable[[Request], None] | None = None  # hears each request as the engine takes it in
        engine.add_requests(self._feed(requests))

    def feed(self, requests: Iterable[Request]) -> None:
        """Hand the engine more requests (sorted by arrival, none before those already handed over)."""
        self._exhausted = False
        self.engine.add_requests(self._feed(requests))

    def _feed(self, requests: Iterable[Request]) -> Iterator[Request]:
        for req in requests:
            self._fed.append((req.arrival_s, req.request_id))
            if self.on_feed is not None:
                self.on_feed(req)  # the what-if replayer records the window's arrivals (engine_adapter/replay.py)
            yield req
        self._exhausted = True

    # -- EngineAdapter ------------------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return Capabilities(engine="sim", policy_kinds=_policy_kinds(), simulated=True)

    def apply(self, spec: PolicySpec) -> None:
        try:
            self.engine.set_policy(spec)
        except (ValueError, TypeError) as exc:  # e.g. a family switch with requests in flight
            raise UnsupportedPolicy(f"{spec.kind}: {exc}") from None

    def set_conservativeness(self, value: float) -> dict[str, float]:
        """``schedule_conservativeness`` from now on (``SimEngine.set_conservativeness``); returns the readback."""
        self.engine.set_conservativeness(value)
        return self.reserve()

    def reserve(self) -> dict[str, float]:
        """The engine's reserve as the SGLang plugin reads it back (``engine_adapter/sglang/reserve.py``)."""
        cfg, rs = self.engine.cfg, self.engine.running_set
        out = {"new_token_ratio_init": cfg.init_new_token_ratio if cfg.init_new_token_ratio is not None
               else cfg.new_token_ratio, "new_token_ratio_min": cfg.new_token_ratio, "new_token_ratio": rs.ratio}
        if cfg.schedule_conservativeness is not None:
            out["schedule_conservativeness"] = cfg.schedule_conservativeness
        return out

    def observe(self) -> Observation:
        start_s = self.now_s
        end_s = start_s + self.window_s
        self.engine.run(until_s=end_s)
        self.now_s = end_s
        return self._window(start_s, end_s)

    # -- helpers ------------------------------------------------------------------------------------------------------
    def done(self) -> bool:
        """Every request has arrived and finished."""
        return self._exhausted and self.engine.done()

    def _window(self, start_s: float, end_s: float) -> Observation:
        eng = self.engine
        firsts = eng.first_token_times
        ttfts = [ft - arr for arr, ft in firsts]
        for arr, _ft in firsts:
            self._served[arr] += 1
        if self.ttfts_s is not None and self.ttft_arrivals_s is not None:
            self.ttfts_s.extend(ttfts)
            self.ttft_arrivals_s.extend(arr for arr, _ft in firsts)
        del firsts[:]
        for rid in eng.aborted[self._aborted:]:
            self._gone.add(rid)
        self._aborted = len(eng.aborted)
        log = eng.completed
        completions = len(log) - self._completed
        prompt_mean = float(log.column("prompt_tokens", len(log) - completions).mean()) if completions else None
        if self.trim_log:
            eng.completed = RequestLog(keep_token_times=log.token_times is not None)
            self._completed = 0
        else:
            self._completed = len(log)
        arrivals = eng.arrivals - self._arrivals
        self._arrivals = eng.arrivals
        hit, lookup = eng.cache.hit_tokens - self._hit, eng.cache.lookup_tokens - self._lookup
        self._hit, self._lookup = eng.cache.hit_tokens, eng.cache.lookup_tokens
        retractions, self._retractions = eng.retractions - self._retractions, eng.retractions
        return Observation(
            start_s=start_s, end_s=end_s, arrivals=arrivals, completions=completions,
            ttft=LatencyDist(samples_s=ttfts), tbt=eng.tbt.drain(), queue_len=eng.queue_len, running=eng.running,
            cache_hit_rate=min(1.0, hit / lookup) if lookup > 0 else None,
            kv_utilization=min(1.0, max(0.0, eng.kv_utilization)), prompt_tokens_mean=prompt_mean,
            active_policy=eng.policy, oldest_wait_s=self._oldest_wait_s(end_s), retractions=retractions,
            conservativeness=eng.cfg.schedule_conservativeness,
        )

    def _oldest_wait_s(self, now_s: float) -> float:
        fed, served, gone = self._fed, self._served, self._gone
        while fed:
            arr, rid = fed[0]
            if served[arr] > 0:
                served[arr] -= 1
                if not served[arr]:
                    del served[arr]
            elif rid in gone:
                gone.discard(rid)
            else:
                break
            fed.popleft()
        if not fed or fed[0][0] > now_s:
            return 0.0
        return max(0.0, now_s - fed[0][0])

    def waiting_ages_s(self) -> np.ndarray:
        """Ages (at the adapter's clock) of the arrived requests still waiting for their first token."""
        served = Counter(self._served)
        ages = []
        for arr, rid in self._fed:
            if served[arr] > 0:
                served[arr] -= 1
            elif rid not in self._gone and arr <= self.now_s:
                ages.append(self.now_s - arr)
        return np.asarray(ages, dtype=float)


def window_count(duration_s: float, window_s: float) -> int:
    """Windows needed to cover ``duration_s``."""
    return max(1, math.ceil(duration_s / window_s - 1e-9))
