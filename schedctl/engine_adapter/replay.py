"""The what-if replayer of the embedded engine: re-run the recent window from its start state under other k.

State carried. ``begin_window()`` (the shell calls it just before ``observe()``) keeps a snapshot of the whole
``SimAdapter``: the engine — waiting queue in its k-LPM order, the request being chunk-prefilled, the running
requests with their decode progress and KV reservations, the radix prefix cache with its locks and LRU clock,
the step-time model, the retraction ratio — and the adapter's own bookkeeping (which arrived requests still wait,
for the oldest-wait figure). While the window runs the adapter reports every request the engine takes from its
source (``SimAdapter.on_feed``). ``replay(arms)`` restores a copy of the snapshot per arm, hands it the same
requests, switches it to the arm's policy and runs it to the end of the window: the Observation it returns is
the window that arm would have produced. Nothing is approximated: replaying the arm that really ran reproduces
the live window exactly (a test checks it), so the differences between arms are the policy's alone.

``horizon_windows`` > 1 keeps the last N snapshots and replays from the oldest: N windows under one arm (the
live run may have changed arms in between; the running arm's replay is then its counterfactual too).

How the snapshot is made, and what it costs. The adapter is pickled with every generator cut (the request
source: the replay gets the recorded requests instead) and the decision hook dropped; token arrays
(``array('q')``: prompts, cache edges, output ids) are not copied but shared between the live engine and the
copies — schedctl never changes a token array in place (``tokens.py``: slicing makes new arrays), so sharing is
safe, and it makes a snapshot ~0.2 MB and ~5 ms instead of ~30 MB and ~50 ms. The two kinds of arrays that are
written in place — the request log's columns and the adapter's TTFT list — are copied (the log) or dropped (the
list). ``benchmarks/whatif_convergence.py`` prints the cost per tick (a few ms per arm on the demo scenarios).

SGLang. There is no equivalent replayer for the SGLang adapter: its per-request export (``take_requests``)
gives arrival times, prompt and cached token counts of *finished* requests, but no token ids, no waiting queue
and no cache contents, so which requests share which prefixes — the very thing k changes — is unknown. A replay
from lengths and cached counts would have to invent the prefix structure; it is not offered (the sidecar refuses
``[whatif] enabled`` with the SGLang adapter).
"""

from __future__ import annotations

import io
import pickle
import time
import types
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schedctl.engine_adapter.base import Counterfactual, ReplayReport
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.arms import ArmValue, spec_for
from schedctl.workloads.types import Request

_CUT_GENERATOR = "generator"
_DROPPED = "dropped"


class _Pickler(pickle.Pickler):
    """Pickles a SimAdapter: generators cut, listed objects dropped, token arrays kept by reference."""

    def __init__(self, file: io.BytesIO, drop: set[int], copy: set[int]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared: list[array[int]] = []
        self._drop, self._copy = drop, copy

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is array and obj.typecode == "q" and id(obj) not in self._copy:
            self.shared.append(obj)
            return len(self.shared) - 1
        if isinstance(obj, types.GeneratorType):
            return _CUT_GENERATOR
        if id(obj) in self._drop:
            return _DROPPED
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, shared: list[array[int]]) -> None:
        super().__init__(io.BytesIO(data))
        self._shared = shared

    def persistent_load(self, pid: Any) -> Any:
        if pid == _CUT_GENERATOR:
            return iter(())
        if pid == _DROPPED:
            return None
        return self._shared[pid]


@dataclass
class _Snapshot:
    data: bytes
    shared: list[array[int]]
    start_s: float
    fed_index: int  # position in the replayer's request record when the snapshot was taken
    state: dict[str, float] = field(default_factory=dict)


def snapshot(adapter: SimAdapter, drop: Sequence[object] = ()) -> tuple[bytes, list[array[int]]]:
    """The adapter's state as (pickle, shared token arrays); ``drop`` objects come back as None."""
    log = adapter.engine.completed
    copy = {id(a) for a in (*log.cols_f.values(), *log.cols_i.values())}  # written in place: copied
    dropped = {id(o) for o in drop if o is not None}
    if adapter.ttfts_s is not None:
        dropped.add(id(adapter.ttfts_s))  # the benchmark's list of every TTFT: not the replay's business
    buf = io.BytesIO()
    p = _Pickler(buf, dropped, copy)
    p.dump(adapter)
    return buf.getvalue(), p.shared


def restore(data: bytes, shared: list[array[int]]) -> SimAdapter:
    clone = _Unpickler(data, shared).load()
    assert isinstance(clone, SimAdapter)
    return clone


class SimReplayer:
    """The Replayer (controller/whatif.py) of a SimAdapter. Attach it before the first tick."""

    def __init__(self, adapter: SimAdapter, horizon_windows: int) -> None:
        if horizon_windows < 1:
            raise ValueError(f"horizon_windows must be >= 1, got {horizon_windows}")
        self.adapter = adapter
        self.horizon_windows = horizon_windows
        self._snapshots: deque[_Snapshot] = deque(maxlen=horizon_windows)
        self._fed: list[Request] = []  # requests the engine took in since the oldest snapshot kept
        self._fed_base = 0  # index (in all requests ever recorded) of self._fed[0]
        self._hook = self._record  # one bound method: the snapshot drops exactly this object
        adapter.on_feed = self._hook

    def _record(self, req: Request) -> None:
        self._fed.append(req)

    def begin_window(self) -> None:
        ad = self.adapter
        data, shared = snapshot(ad, drop=[self._hook])
        eng = ad.engine
        state = {"queue_len": float(eng.queue_len), "running": float(eng.running),
                 "cached_tokens": float(eng.cache.tree_tokens), "snapshot_kib": len(data) / 1024}
        self._snapshots.append(_Snapshot(data, shared, ad.now_s, self._fed_base + len(self._fed), state))
        oldest = self._snapshots[0].fed_index
        if oldest > self._fed_base:  # forget requests older than every snapshot kept
            del self._fed[: oldest - self._fed_base]
            self._fed_base = oldest

    def replay(self, arms: Sequence[ArmValue], budget_ms: float | None = None) -> ReplayReport:
        t0 = time.perf_counter()
        if not self._snapshots:
            return ReplayReport(error="no snapshot: begin_window() was not called before this window")
        snap = self._snapshots[0]
        end_s = self.adapter.now_s
        arrivals = self._fed[snap.fed_index - self._fed_base:]
        results: list[Counterfactual] = []
        skipped: list[ArmValue] = []
        for arm in arms:
            if budget_ms is not None and results and (time.perf_counter() - t0) * 1e3 >= budget_ms:
                skipped.append(arm)
                continue
            results.append(self._replay_arm(snap, arrivals, arm, end_s))
        return ReplayReport(
            start_s=snap.start_s, end_s=end_s, windows=len(self._snapshots),
            state={**snap.state, "arrivals": float(sum(r.arrival_s <= end_s for r in arrivals))},
            results=results, skipped=skipped, wall_ms=(time.perf_counter() - t0) * 1e3,
        )

    def _replay_arm(self, snap: _Snapshot, arrivals: list[Request], arm: ArmValue, end_s: float) -> Counterfactual:
        t0 = time.perf_counter()
        try:
            clone = restore(snap.data, snap.shared)
            clone.feed(arrivals)
            clone.window_s = end_s - snap.start_s
            spec = spec_for(arm)
            if clone.engine.policy != spec:  # a switch restarts k-LPM's pick cycle: only where the arm differs
                clone.apply(spec)
            obs = clone.observe()
        except Exception as exc:  # one arm's failure is that arm's; the others still count
            return Counterfactual(arm=arm, error=f"{type(exc).__name__}: {exc}",
                                  wall_ms=(time.perf_counter() - t0) * 1e3)
        return Counterfactual(arm=arm, observation=obs, wall_ms=(time.perf_counter() - t0) * 1e3)
