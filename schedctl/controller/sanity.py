"""The observation sanity gate: the one place a window is judged plausible before anything learns from it. Pure.

``Controller.step`` passes every observation through :func:`gate` first. A window with a non-finite or negative
value, a latency above ``max_latency_s``, a queue or running count above ``max_queue_len``, or more arrivals or
completions than ``max_rate_rps`` allows in its duration is not data: it becomes a stale window whose reason
names the value, with its numbers dropped (so a 1e300 never reaches the objective, a learner, the guard's
baselines or the decision log). Stale windows count toward the fallback exactly as an outage does; the engine's
reported policy and generation are kept, since they did not come from the broken metrics.

Adapters keep their own counters sane for restart detection (a negative or non-finite counter is not a reset:
``engine_adapter/sglang/metrics.py``); this gate covers whatever any adapter hands over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from schedctl.engine_adapter.base import Observation
from schedctl.stats import LatencyDist


class SanityParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_latency_s: float = Field(
        default=3600.0, gt=0, le=1e6, allow_inf_nan=False,
        description="a TTFT, TBT or waiting age above this is not a measurement",
    )
    max_queue_len: int = Field(
        default=1_000_000, ge=1, le=10**9, description="more waiting (or running) requests than an engine could hold"
    )
    max_rate_rps: float = Field(
        default=1e6, gt=0, le=1e9, allow_inf_nan=False, description="arrivals or completions per second above this "
        "are not traffic"
    )


def _num(n: float) -> str:
    """A number for a reason string, even one too large for a float (a 400-digit int)."""
    if isinstance(n, int) and abs(n) >= 10**12:
        return f"{str(n)[:4]}... ({len(str(abs(n)))} digits)"
    return f"{n:.3g}"


def _bad_number(x: float) -> bool:
    return not math.isfinite(x) or x < 0


def _dist_problem(name: str, dist: LatencyDist, p: SanityParams, most: float) -> str | None:
    values: Iterable[float] = dist.samples_s
    for v in values:
        if _bad_number(v):
            return f"{name} sample {v!r}"
        if v > p.max_latency_s:
            return f"{name} sample {v:.3g} s above {p.max_latency_s:g} s"
    for c in dist.bucket_counts:
        if _bad_number(c):
            return f"{name} bucket count {c!r}"
    total = float(sum(dist.bucket_counts))
    if total > most:
        return f"{name} count {total:.3g} above {most:.3g}"
    if dist.bucket_counts:
        finite = [b for b in dist.bucket_upper_s if math.isfinite(b)]
        q = dist.quantile(0.99)
        if math.isfinite(q) and finite and q > p.max_latency_s:
            return f"{name} P99 {q:.3g} s above {p.max_latency_s:g} s"
    return None


def problem(obs: Observation, p: SanityParams) -> str | None:
    """What makes ``obs`` implausible, or None."""
    if not (math.isfinite(obs.start_s) and math.isfinite(obs.end_s)):
        return f"window times {obs.start_s!r}..{obs.end_s!r}"
    most = p.max_rate_rps * max(obs.duration_s, 1.0)
    for name, n in (("arrivals", obs.arrivals), ("completions", obs.completions)):
        if n > most:
            return f"{name} {_num(n)} in {obs.duration_s:.3g} s"
    for name, n in (("queue_len", obs.queue_len), ("running", obs.running)):
        if n > p.max_queue_len:
            return f"{name} {_num(n)} above {p.max_queue_len}"
    for name, x in (("cache_hit_rate", obs.cache_hit_rate), ("kv_utilization", obs.kv_utilization),
                    ("prompt_tokens_mean", obs.prompt_tokens_mean)):
        if x is not None and _bad_number(x):
            return f"{name} {x!r}"
    if obs.oldest_wait_s is not None:
        if _bad_number(obs.oldest_wait_s):
            return f"oldest_wait_s {obs.oldest_wait_s!r}"
        if obs.oldest_wait_s > p.max_latency_s:
            return f"oldest_wait_s {obs.oldest_wait_s:.3g} above {p.max_latency_s:g} s"
    return _dist_problem("ttft", obs.ttft, p, most) or _dist_problem("tbt", obs.tbt, p, most * 1e4)


def gate(obs: Observation, p: SanityParams, last_end_s: float | None) -> Observation:
    """``obs`` if plausible (or already stale); otherwise an empty stale window saying why."""
    why = problem(obs, p)
    if why is None:
        return obs
    if obs.stale and obs.stale_reason:
        why = f"{obs.stale_reason}; {why}"
    end = obs.end_s if math.isfinite(obs.end_s) else (last_end_s if last_end_s is not None else 0.0)
    start = obs.start_s if math.isfinite(obs.start_s) and obs.start_s <= end else end
    return Observation(start_s=start, end_s=end, arrivals=0, completions=0, stale=True,
                       stale_reason=f"implausible metrics: {why}", active_policy=obs.active_policy,
                       active_reported=obs.active_reported, engine_generation=obs.engine_generation,
                       reachable=obs.reachable)
