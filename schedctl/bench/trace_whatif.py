"""`schedctl whatif --trace FILE`: what schedctl would have done on an operator's own traffic.

A trace (any format ``--trace`` reads: schedctl JSONL, Mooncake, Azure CSV, or one the SGLang plugin recorded)
becomes a one-phase scenario and runs through the bench's loop (``bench/adaptive.py``: ``Service.tick`` over the
embedded engine, one window per tick) under every static policy of the arm set and under the adaptive controller,
the same controller code as ``schedctl bench adaptive`` and the sidecar. Each run reports P50/P99 TTFT, SLO
attainment and the prefix-cache hit rate (:class:`WhatIfRow`).

The recommendation (:func:`recommend`): the adaptive controller when its P99 TTFT is within ``tolerance`` of the
best static policy's (it also follows traffic that changes, which a replay of one trace cannot show), else the
best static policy. Its settings file is the given settings with ``[tuner] initial_policy`` at the best static
policy; when a static policy is recommended, ``[service] mode = "advisory"`` too (the controller logs what it
would do and pushes nothing; pin the policy on the engine). The expected gain is against the policy the engine
runs now (``current``): P99 TTFT current ÷ recommended, and attainment recommended − current.

(Not to be confused with ``controller/whatif.py``, the per-tick what-if replay inside the controller.)
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel

from schedctl.bench.adaptive import ADAPTIVE, RunResult
from schedctl.bench.scenarios import Phase, Scenario, Stream
from schedctl.files import AtomicWriter, InputFileError
from schedctl.workloads.trace import read_trace, time_scaled

TOLERANCE = 0.05  # adaptive within 5% of the best static policy's P99: recommend adaptive


class WhatIfRow(BaseModel):
    policy: str
    requests: int
    ttft_p50_s: float
    ttft_p99_s: float
    attainment: float
    cache_hit_rate: float
    changes: int = 0


class Recommendation(BaseModel):
    policy: str  # "adaptive" or a static policy label
    best_static: str
    current: str
    p99_gain: float  # current's P99 TTFT / the recommendation's
    attainment_gain: float  # the recommendation's attainment - current's
    reason: str


def trace_scenario(path: str | os.PathLike[str], time_scale: float = 1.0) -> Scenario:
    """A trace as a one-phase scenario (the trace is read whole here: a bad line fails before any run)."""
    last_s = -1.0
    count = 0
    for req in time_scaled(read_trace(path), time_scale):
        last_s, count = req.arrival_s, count + 1
    if not count:
        raise InputFileError(path, "", "no requests in this trace (nothing to replay)")
    stream = Stream(trace=str(path), time_scale=time_scale)
    return Scenario(name=Path(path).name, kind="stationary", description=f"{count} requests of {path}",
                    phases=[Phase(duration_s=max(last_s, 0.0) + 1.0, streams=[stream])])


def rows_of(results: Sequence[RunResult]) -> list[WhatIfRow]:
    return [WhatIfRow(policy=r.policy, requests=r.requests, ttft_p50_s=r.ttft_p50_s, ttft_p99_s=r.ttft_p99_s,
                      attainment=r.attainment, cache_hit_rate=r.cache_hit_rate, changes=r.changes)
            for r in results]


def recommend(rows: Sequence[WhatIfRow], statics: Sequence[str], current: str,
              tolerance: float = TOLERANCE) -> Recommendation:
    by = {r.policy: r for r in rows}
    best = min((p for p in statics if p in by), key=lambda p: (by[p].ttft_p99_s, -by[p].attainment))
    adaptive = by[ADAPTIVE]
    if adaptive.ttft_p99_s <= by[best].ttft_p99_s * (1 + tolerance):
        pick, reason = ADAPTIVE, (f"adaptive P99 {adaptive.ttft_p99_s:.3g} s is within {tolerance:.0%} of the best "
                                  f"static policy's ({best}, {by[best].ttft_p99_s:.3g} s)")
    else:
        pick, reason = best, (f"{best} (P99 {by[best].ttft_p99_s:.3g} s) beats adaptive ({adaptive.ttft_p99_s:.3g} s) "
                              f"by more than {tolerance:.0%} on this trace")
    rec, cur = by[pick], by[current]
    gain = cur.ttft_p99_s / rec.ttft_p99_s if rec.ttft_p99_s > 0 else math.inf
    return Recommendation(policy=pick, best_static=best, current=current, p99_gain=gain,
                          attainment_gain=rec.attainment - cur.attainment, reason=reason)


def write_settings(path: str | os.PathLike[str], base: dict[str, Any], rec: Recommendation,
                   arms: list[Any] | None, source: str) -> None:
    """The recommended settings: ``base`` (a settings file's tables) with the recommendation applied."""
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    tuner = doc.setdefault("tuner", {})
    tuner["initial_policy"] = rec.best_static
    if arms is not None:
        tuner["arms"] = arms
    if rec.policy != ADAPTIVE:
        doc.setdefault("service", {})["mode"] = "advisory"
    head = [f"# Written by `schedctl whatif` from {source}.", f"# Recommendation: {rec.policy}. {rec.reason}.",
            f"# Expected against the current policy ({rec.current}): P99 TTFT ÷ {rec.p99_gain:.3g}, "
            f"SLO attainment {rec.attainment_gain:+.1%}."]
    if rec.policy != ADAPTIVE:
        head.append(f"# Pin {rec.policy} on the engine (e.g. `schedctl sglang push {rec.policy}`); the controller "
                    "runs in advisory mode: it logs what it would do and pushes nothing.")
    with AtomicWriter(path) as fh:
        fh.write("\n".join(itertools.chain(head, [""])) + "\n" + tomli_w.dumps(doc))
