"""When each request is sent: the stream's own arrival times, shifted to start at 0, optionally re-timed.

- ``rate``: replace the arrival times by a Poisson process at that rate (or rate schedule), drawn from ``seed``
  (the same seed gives the same times); the order of the requests is kept.
- ``time_scale``: multiply every offset (0.5 plays a trace twice as fast, 2 half as fast;
  ``workloads.trace.time_scaled``).

The first request goes at offset 0 whatever its ``arrival_s`` (a trace cut from the middle of a day does not
wait for its first arrival); the gaps between requests are the stream's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

from schedctl.workloads.arrivals import ArrivalSpec, RateSchedule, arrival_times
from schedctl.workloads.trace import time_scaled
from schedctl.workloads.types import Request


def retime(
    requests: Iterable[Request], rate: RateSchedule | float | None = None, seed: int = 0, time_scale: float = 1.0,
) -> Iterator[Request]:
    """The requests with ``arrival_s`` as the offset at which to send them (lazy)."""
    times = None if rate is None else arrival_times(ArrivalSpec(), rate, np.random.default_rng(seed))
    yield from time_scaled(_offsets(requests, times), time_scale)


def _offsets(requests: Iterable[Request], times: Iterator[float] | None) -> Iterator[Request]:
    first_s: float | None = None
    for req in requests:
        if times is not None:
            try:
                t = next(times)
            except StopIteration:
                return  # a rate schedule that stops
        else:
            if first_s is None:
                first_s = req.arrival_s
            t = req.arrival_s - first_s
        yield dataclasses.replace(req, arrival_s=t)
