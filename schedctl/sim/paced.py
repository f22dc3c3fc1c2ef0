"""The embedded engine driven in real time: requests come in at the caller's times, tokens go out at theirs.

`schedctl simulate` runs the engine as a discrete-event loop over requests known in advance. `schedctl sim serve`
(``schedctl/simserve/``) cannot know the next arrival: requests arrive over HTTP. This is its functional core,
with no I/O and no clock of its own — every call takes ``now_s``, the simulated time the caller's clock reads
(wall time × the time scale), so tests drive it with a hand-set clock:

* :meth:`PacedEngine.submit` queues a request arriving at ``now_s`` (arrivals must not go back in time);
* :meth:`PacedEngine.advance` runs the engine up to ``now_s`` (``SimEngine.run(until_s=now_s)``): the engine
  stops at the first batch boundary at or after ``now_s``, exactly where the event loop of `simulate` would stop
  for an arrival at ``now_s``, so a request submitted later at that time finds the engine as `simulate` would;
* :meth:`PacedEngine.release` hands out, per request, the tokens whose simulated emission time is at or before
  ``now_s`` — a token computed by a batch that ends in the future is released when the clock gets there;
* :meth:`PacedEngine.next_event_s` says when to call again (the next token due, or the end of the batch in
  progress), first tokens apart from later ones; nothing happens before it unless a request arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from schedctl.sim.engine import _OUTPUT_TOKEN_BASE, SimEngine, _Live
from schedctl.tokens import IdAllocator, TokenArray
from schedctl.workloads.types import Request


@dataclass(slots=True)
class Stream:
    """One request as its client sees it: what was released so far, and how it ended."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_len: int
    output_ids: TokenArray
    token_times_s: list[float] = field(default_factory=list)  # released tokens' simulated emission times
    cached_tokens: int = 0
    retractions: int = 0
    aborted: bool = False

    @property
    def released(self) -> int:
        return len(self.token_times_s)

    @property
    def finished(self) -> bool:
        return self.aborted or self.released >= self.output_len

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None


class PacedEngine:
    """A :class:`SimEngine` fed one request at a time and read at the caller's times.

    The engine must be built with ``EngineConfig(stream_tokens=True)``: that is how it hands over each request's
    token times.
    """

    def __init__(self, engine: SimEngine) -> None:
        if engine.streams is None:
            raise ValueError("PacedEngine needs an engine built with EngineConfig(stream_tokens=True)")
        self.engine = engine
        self._pending: list[Request] = []
        self._open: dict[int, tuple[Stream, _Live | None]] = {}
        self._next_id = 0
        self._last_arrival_s = -math.inf
        self._out_ids = IdAllocator(_OUTPUT_TOKEN_BASE)  # the engine's own range: it then allocates none

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def submit(self, prompt: TokenArray, output_len: int, now_s: float, slo_class: str = "default") -> Stream:
        """A request arriving at ``now_s``; it enters the engine at the next :meth:`advance`."""
        if now_s < self._last_arrival_s:
            raise ValueError(f"arrival at {now_s} s before the previous one at {self._last_arrival_s} s")
        self._last_arrival_s = now_s
        rid = self._next_id
        self._next_id += 1
        out = self._out_ids.take(output_len)
        req = Request(request_id=rid, arrival_s=now_s, prompt=prompt, output_len=output_len, output_tokens=out,
                      slo_class=slo_class)
        stream = Stream(request_id=rid, arrival_s=now_s, prompt_tokens=len(req.prompt), output_len=output_len,
                        output_ids=out)
        self._pending.append(req)
        self._open[rid] = (stream, None)
        return stream

    def advance(self, now_s: float) -> None:
        """Run the engine up to simulated time ``now_s`` (it may end inside a batch that finishes later)."""
        eng = self.engine
        if self._pending:
            eng.add_requests(self._pending)
            self._pending = []
        eng.run(until_s=now_s)
        eng.first_token_times.clear()  # nobody drains them here; they would only grow
        streams = eng.streams
        assert streams is not None
        for rid, live in streams.items():
            entry = self._open.get(rid)
            if entry is not None:
                self._open[rid] = (entry[0], live)
        streams.clear()
        if eng.aborted:
            for rid in eng.aborted:
                entry = self._open.get(rid)
                if entry is not None:
                    entry[0].aborted = True
            eng.aborted.clear()

    def release(self, now_s: float, first_only: bool = False) -> list[Stream]:
        """The streams that got tokens due by ``now_s`` or ended since the previous call (finished ones leave);
        ``first_only``: only streams that had no token yet (their first token, and any after it that are due)."""
        changed = []
        for rid, (stream, live) in list(self._open.items()):
            if first_only and stream.released:
                continue
            if stream.aborted:
                changed.append(stream)
            elif live is not None and live.times is not None:
                times = live.times
                n = stream.released
                while n < len(times) and times[n] <= now_s:
                    n += 1
                if n > stream.released:
                    stream.token_times_s.extend(times[stream.released:n])
                    stream.cached_tokens = max(0, live.cached_tokens)
                    stream.retractions = live.retractions
                    changed.append(stream)
            if stream.finished:
                del self._open[rid]
        return changed

    def next_event_s(self) -> tuple[float, float]:
        """When :meth:`release` or :meth:`advance` next has something to do, in simulated time: (the next first
        token or end of the batch in progress, the next later token); inf: nothing until a request arrives.

        A shell that wakes for every token of every stream spends its time on chunks; one that wakes for first
        tokens at once and for later tokens every few milliseconds keeps TTFT exact and TBT coarse.
        """
        first, later = math.inf, math.inf
        for stream, live in self._open.values():
            if live is not None and live.times is not None and len(live.times) > stream.released:
                due = live.times[stream.released]
                if stream.released == 0:
                    first = min(first, due)
                else:
                    later = min(later, due)
        eng = self.engine
        if self._pending or eng.queue_len:
            first = min(first, eng.now_s)  # requests wait: the next batch may be a prefill (first tokens)
        elif eng.running:
            later = min(later, eng.now_s)
        return first, later
