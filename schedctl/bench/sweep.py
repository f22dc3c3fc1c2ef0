"""Sweeps: one workload over a grid of rates × policies (× seeds), on the embedded engine.

Runs are independent, so they go to a process pool (one run per task; same seed, same result, whatever the
pool). ``rates="auto"`` spans light load to clearly past saturation: the capacity is measured by serving a burst
(every request at once) under FCFS and under LPM, and the grid runs from a fraction of FCFS's to 1.5 × LPM's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from schedctl.policies.spec import FCFSSpec, LPMSpec, PolicySpec, policy_label
from schedctl.sim.engine import EngineConfig
from schedctl.sim.run import Hardware, SimSummary, simulate
from schedctl.workloads.registry import WorkloadSpec, make_requests

KNEE_FRACTIONS = (0.3, 0.6, 0.8, 0.9, 1.0)  # of FCFS's capacity: light load up to its knee
PAST_KNEE, PAST_KNEE_POINTS = 1.5, 4  # then 4 rates on to 1.5 × LPM's capacity
T = TypeVar("T")
R = TypeVar("R")


class RunSpec(BaseModel):
    """Everything one simulation run needs (picklable, so it can go to a worker process)."""

    model_config = ConfigDict(frozen=True)

    workload: WorkloadSpec
    arrival: str = "poisson"
    rate: float
    num_requests: int
    seed: int
    policy: PolicySpec
    hardware: Hardware
    engine: EngineConfig = EngineConfig()
    warmup_s: float = 0.0  # requests arriving before this are left out of the figures


def run_one(spec: RunSpec) -> SimSummary:
    reqs = make_requests(spec.workload, spec.rate, spec.arrival, num_requests=spec.num_requests, seed=spec.seed)
    _engine, summary = simulate(reqs, spec.policy, spec.hardware, spec.engine, rate=spec.rate, seed=spec.seed,
                                warmup_s=spec.warmup_s)
    return summary


def burst_capacities_rps(workload: WorkloadSpec, hw: Hardware, engine: EngineConfig, num_requests: int,
                         seed: int) -> tuple[float, float]:
    """Throughput when every request arrives at once, under FCFS and under LPM: the engine's capacity without and
    with the best prefix reuse an order can give (equal when every prefix fits in the KV cache)."""
    caps = []
    for policy in (FCFSSpec(), LPMSpec()):
        spec = RunSpec(workload=workload, arrival="regular", rate=1e9, num_requests=num_requests, seed=seed,
                       policy=policy, hardware=hw, engine=engine)
        caps.append(run_one(spec).throughput_rps)
    return caps[0], caps[1]


def saturation_rps(workload: WorkloadSpec, hw: Hardware, engine: EngineConfig, num_requests: int, seed: int) -> float:
    """The engine's capacity under the better of FCFS and LPM (req/s)."""
    return max(burst_capacities_rps(workload, hw, engine, num_requests, seed))


def auto_rates(workload: WorkloadSpec, hw: Hardware, engine: EngineConfig, num_requests: int, seed: int) -> list[float]:
    """Light load to clearly past the knee: fractions of FCFS's capacity up to it, then on to
    ``PAST_KNEE`` × LPM's capacity, where every policy's queue grows (and where the order matters, they part)."""
    fcfs_rps, lpm_rps = burst_capacities_rps(workload, hw, engine, num_requests, seed)
    low, high = min(fcfs_rps, lpm_rps), max(fcfs_rps, lpm_rps) * PAST_KNEE
    rates = [f * low for f in KNEE_FRACTIONS] + [float(r) for r in np.linspace(low, high, PAST_KNEE_POINTS + 1)[1:]]
    return sorted({float(f"{r:.3g}") for r in rates})


class SweepRow(BaseModel):
    """One (rate, policy) point: the mean over seeds of each figure. The JSON that `sweep --json` prints."""

    rate: float
    policy: str
    seeds: int
    requests: int
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    ttft_max_s: float
    tbt_p50_s: float
    tbt_p99_s: float
    throughput_rps: float
    cache_hit_rate: float
    retractions: float
    warmup_s: float = 0.0


def aggregate(rate: float, policy: str, runs: Sequence[SimSummary]) -> SweepRow:
    def mean(field: str) -> float:
        return float(np.mean([getattr(r, field) for r in runs]))

    return SweepRow(
        rate=rate, policy=policy, seeds=len(runs), requests=sum(r.requests for r in runs),
        ttft_p50_s=mean("ttft_p50_s"), ttft_p90_s=mean("ttft_p90_s"), ttft_p99_s=mean("ttft_p99_s"),
        ttft_max_s=mean("ttft_max_s"), tbt_p50_s=mean("tbt_p50_s"), tbt_p99_s=mean("tbt_p99_s"),
        throughput_rps=mean("throughput_rps"), cache_hit_rate=mean("cache_hit_rate"), retractions=mean("retractions"),
        warmup_s=runs[0].warmup_s if runs else 0.0,
    )


def pool_map(
    fn: Callable[[T], R], items: Sequence[T], jobs: int, on_done: Callable[[], None] | None = None
) -> list[R]:
    """``fn`` over ``items`` in a pool of ``jobs`` processes (in this process when jobs <= 1); results in order.

    ``fn`` must be a module-level function (it is pickled to the workers).
    """
    if jobs <= 1 or len(items) <= 1:
        out = []
        for x in items:
            out.append(fn(x))
            if on_done:
                on_done()
        return out
    with ProcessPoolExecutor(max_workers=min(jobs, len(items))) as pool:
        results = []
        for r in pool.map(fn, items):
            results.append(r)
            if on_done:
                on_done()
        return results


def run_many(specs: Sequence[RunSpec], jobs: int, on_done: Callable[[], None] | None = None) -> list[SimSummary]:
    """Run specs, in a pool of ``jobs`` processes when jobs > 1; results in the order of ``specs``."""
    return pool_map(run_one, specs, jobs, on_done)


def sweep(
    workload: WorkloadSpec, rates: Sequence[float], policies: Sequence[PolicySpec], hw: Hardware,
    engine: EngineConfig, num_requests: int, seeds: Sequence[int], arrival: str = "poisson", jobs: int = 1,
    on_done: Callable[[], None] | None = None, warmup_s: float = 0.0,
) -> list[SweepRow]:
    specs = [
        RunSpec(workload=workload, arrival=arrival, rate=r, num_requests=num_requests, seed=s, policy=p,
                hardware=hw, engine=engine, warmup_s=warmup_s)
        for r in rates for p in policies for s in seeds
    ]
    results = run_many(specs, jobs, on_done)
    rows = []
    per = len(seeds)
    for i in range(0, len(results), per):
        spec = specs[i]
        rows.append(aggregate(spec.rate, policy_label(spec.policy), results[i : i + per]))
    return rows


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def best_policy_per_rate(rows: Sequence[SweepRow], metric: str = "ttft_p99_s") -> dict[float, str]:
    """The policy with the lowest ``metric`` at each rate (ties: the first listed)."""
    best: dict[float, tuple[float, str]] = {}
    for row in rows:
        value = getattr(row, metric)
        if math.isnan(value):
            continue
        if row.rate not in best or value < best[row.rate][0]:
            best[row.rate] = (value, row.policy)
    return {rate: name for rate, (_v, name) in best.items()}
