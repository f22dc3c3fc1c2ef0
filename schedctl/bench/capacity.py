"""Capacity: the highest request rate at which a policy meets a latency SLO, found by bisection over rate.

As the SLAI paper defines it (REFERENCES §2): the largest rate at which the TTFT quantile (the median by default)
stays under a threshold (0.5 s) and the P99 time between tokens meets the TBT SLO. With SLO classes, each class's
P99 TBT is held to its own SLO (strict 0.1 s, relaxed 0.5 s, default 0.2 s by default): a single overall P99
against one value would fail SLAI for using exactly the slack that the relaxed class allows. TTFT here is arrival
to first token (the authors' capacity search used Sarathi's "scheduling delay", arrival to first scheduled, which
leaves out the prefill itself).

One condition is ours: the engine must keep up. A finite run above the engine's throughput can still show a low
median TTFT — the backlog builds late in the run, and shortest-prompt-first keeps serving the short prompts of an
overloaded queue while the long ones starve — so a rate also fails when the requests in the system (arrived, not
finished) grow, over the second half of the arrival window, by more than ``max_backlog_growth`` of that half's
arrivals (below capacity they do not grow; above it they grow in proportion to the excess).

Search, per policy, all policies in lockstep so each step's runs (policies × seeds) share one process pool:

1. upper bound: 1.1 × the policy's saturation throughput (every request arriving at once: 90% of them over the
   time to finish 90%, so one long output does not set it), doubled while it still meets the SLO; lower bound 0;
2. bisect: a rate meets the SLO when the mean over seeds of each figure (the TTFT quantile, each class's TBT
   quantile) does; stop when the bracket is within ``rel_tolerance`` of its lower end, or after ``max_steps``.

Capacity is the highest rate found to meet the SLO (None if none did). Every evaluated point is kept, for the
latency-vs-rate plot. Same seeds, same answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schedctl.bench.sweep import RunSpec, pool_map
from schedctl.policies.spec import PolicySpec, policy_label
from schedctl.sim.engine import EngineConfig
from schedctl.sim.run import Hardware, simulate
from schedctl.workloads.registry import WorkloadSpec, make_requests


class CapacitySLO(BaseModel):
    """The SLO a rate must meet; every threshold in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_quantile: float = Field(0.5, gt=0, lt=1, description="TTFT quantile held under the threshold")
    ttft_threshold_s: float = Field(0.5, gt=0, allow_inf_nan=False)
    tbt_quantile: float = Field(0.99, gt=0, lt=1, description="TBT quantile held under each class's SLO")
    tbt_strict_s: float = Field(0.1, gt=0, allow_inf_nan=False)
    tbt_relaxed_s: float = Field(0.5, gt=0, allow_inf_nan=False)
    tbt_default_s: float = Field(0.2, gt=0, allow_inf_nan=False, description="also for any other class")
    max_backlog_growth: float = Field(0.05, ge=0, allow_inf_nan=False, description="requests in the system may grow "
                                      "by this share of the arrivals over the second half of the arrival window")

    def tbt_slo_s(self, slo_class: str) -> float:
        return {"strict": self.tbt_strict_s, "relaxed": self.tbt_relaxed_s}.get(slo_class, self.tbt_default_s)


class CapacityRun(RunSpec):
    """One run at one rate, and the quantiles its figures are taken at (picklable, for a worker process)."""

    ttft_quantile: float
    tbt_quantile: float


class RunFigures(BaseModel):
    ttft_q_s: float
    tbt_q_s: dict[str, float]  # per SLO class
    tbt_p99_s: float  # all tokens
    ttft_p50_s: float
    backlog_growth: float  # growth of the requests in the system over the arrival window's second half / its arrivals
    requests: int


class CapacityPoint(BaseModel):
    """One policy at one rate: the mean over seeds of each figure, and whether that meets the SLO."""

    policy: str
    rate: float
    seeds: int
    ttft_q_s: float
    ttft_p50_s: float
    tbt_q_s: dict[str, float]
    tbt_p99_s: float
    backlog_growth: float
    meets_slo: bool


class CapacityResult(BaseModel):
    """The JSON that ``schedctl capacity --json`` prints (one per policy)."""

    policy: str
    capacity_rps: float | None
    saturation_rps: float
    at_capacity: CapacityPoint | None
    points: list[CapacityPoint]  # every rate evaluated, in rate order


def measure(run: CapacityRun) -> RunFigures:
    """Serve one run and take its figures (a worker-process entry point)."""
    reqs = make_requests(run.workload, run.rate, run.arrival, num_requests=run.num_requests, seed=run.seed)
    engine, summary = simulate(reqs, run.policy, run.hardware, run.engine, rate=run.rate, seed=run.seed)
    ttft = engine.completed.ttft_s()
    classes = engine.tbt_classes or {}
    return RunFigures(
        ttft_q_s=float(np.quantile(ttft, run.ttft_quantile)) if ttft.size else math.nan,
        tbt_q_s={c: h.quantile(run.tbt_quantile) for c, h in sorted(classes.items())},
        tbt_p99_s=summary.tbt_p99_s, ttft_p50_s=summary.ttft_p50_s, requests=summary.requests,
        backlog_growth=backlog_growth(engine.completed.column("arrival_s"), engine.completed.column("finish_s")),
    )


def backlog_growth(arrival_s: np.ndarray, finish_s: np.ndarray) -> float:
    """How much the requests in the system grew over the second half of the arrival window, per arrival in it."""
    if arrival_s.size < 4:
        return 0.0
    arrivals = np.sort(arrival_s)
    finishes = np.sort(finish_s)
    mid_s, end_s = arrivals[arrivals.size // 2], arrivals[-1]

    def in_system(t: float) -> int:
        return int(np.searchsorted(arrivals, t, "right") - np.searchsorted(finishes, t, "right"))

    arrived = int(np.searchsorted(arrivals, end_s, "right") - np.searchsorted(arrivals, mid_s, "right"))
    return (in_system(end_s) - in_system(mid_s)) / max(arrived, 1)


def saturation(run: CapacityRun) -> float:
    """Throughput (req/s) when every request arrives at once (a worker-process entry point)."""
    burst = run.model_copy(update={"arrival": "regular", "rate": 1e9})
    engine, _summary = simulate(make_requests(burst.workload, burst.rate, burst.arrival,
                                              num_requests=burst.num_requests, seed=burst.seed),
                                burst.policy, burst.hardware, burst.engine)
    finish = engine.completed.column("finish_s")
    return 0.9 * finish.size / float(np.quantile(finish, 0.9)) if finish.size else 0.0


def point(policy: str, rate: float, figures: Sequence[RunFigures], slo: CapacitySLO) -> CapacityPoint:
    classes = sorted({c for f in figures for c in f.tbt_q_s})
    tbt = {c: float(np.mean([f.tbt_q_s[c] for f in figures if c in f.tbt_q_s])) for c in classes}
    ttft = float(np.mean([f.ttft_q_s for f in figures]))
    growth = float(np.mean([f.backlog_growth for f in figures]))
    meets = (ttft <= slo.ttft_threshold_s and all(v <= slo.tbt_slo_s(c) for c, v in tbt.items())
             and growth <= slo.max_backlog_growth)
    return CapacityPoint(
        policy=policy, rate=rate, seeds=len(figures), ttft_q_s=ttft, tbt_q_s=tbt, meets_slo=meets,
        backlog_growth=growth,
        ttft_p50_s=float(np.mean([f.ttft_p50_s for f in figures])),
        tbt_p99_s=float(np.mean([f.tbt_p99_s for f in figures])),
    )


def capacity_search(
    policies: Sequence[PolicySpec], workload: WorkloadSpec, hw: Hardware, engine: EngineConfig, slo: CapacitySLO,
    seeds: Sequence[int], num_requests: int, arrival: str = "poisson", rel_tolerance: float = 0.02,
    max_steps: int = 14, jobs: int = 1, on_step: Callable[[str], None] | None = None,
) -> list[CapacityResult]:
    """The capacity of each policy (see the module docstring); results in the order of ``policies``."""
    if not seeds:
        raise ValueError("capacity_search needs at least one seed")
    engine = engine.model_copy(update={"tbt_by_class": True, "tile_tokens": engine.tile_tokens or hw.gpu.tile_tokens})
    labels = [policy_label(p) for p in policies]

    def runs(policy: PolicySpec, rate: float) -> list[CapacityRun]:
        return [CapacityRun(workload=workload, arrival=arrival, rate=rate, num_requests=num_requests, seed=s,
                            policy=policy, hardware=hw, engine=engine, ttft_quantile=slo.ttft_quantile,
                            tbt_quantile=slo.tbt_quantile) for s in seeds]

    sat = pool_map(saturation, [runs(p, 1.0)[0] for p in policies], jobs)
    lo = [0.0] * len(policies)
    hi = [1.1 * s for s in sat]
    best: list[CapacityPoint | None] = [None] * len(policies)
    points: list[list[CapacityPoint]] = [[] for _ in policies]
    probing = [True] * len(policies)  # still looking for a rate above capacity
    for _step in range(max_steps + 8):
        rates = {i: float(f"{(hi[i] if probing[i] else (lo[i] + hi[i]) / 2):.4g}") for i in range(len(policies))}
        todo = [i for i in range(len(policies)) if probing[i] or (
            hi[i] - lo[i] > rel_tolerance * max(lo[i], 1e-9) and len(points[i]) < max_steps
            and lo[i] < rates[i] < hi[i])]
        if not todo:
            break
        batch = [r for i in todo for r in runs(policies[i], rates[i])]
        figures = pool_map(measure, batch, jobs)
        for k, i in enumerate(todo):
            pt = point(labels[i], rates[i], figures[k * len(seeds) : (k + 1) * len(seeds)], slo)
            points[i].append(pt)
            if pt.meets_slo:
                lo[i], best[i] = pt.rate, pt
                if probing[i]:
                    hi[i] *= 2
            else:
                hi[i], probing[i] = pt.rate, False
            if on_step is not None:
                verdict = "meets" if pt.meets_slo else "misses"
                on_step(f"{labels[i]} @ {pt.rate:g} req/s: TTFT q{slo.ttft_quantile:g} {pt.ttft_q_s:.3f} s, "
                        f"TBT q{slo.tbt_quantile:g} {_fmt_classes(pt.tbt_q_s)}, backlog growth "
                        f"{pt.backlog_growth:+.3f} -> {verdict}")
    results = []
    for i, label in enumerate(labels):
        at = best[i]
        results.append(CapacityResult(policy=label, capacity_rps=at.rate if at is not None else None,
                                      saturation_rps=sat[i], at_capacity=at,
                                      points=sorted(points[i], key=lambda p: p.rate)))
    return results


def _fmt_classes(tbt: dict[str, float]) -> str:
    return ", ".join(f"{c} {v * 1e3:.0f} ms" for c, v in tbt.items()) or "-"


def plot_capacity(results: Sequence[CapacityResult], slo: CapacitySLO, path: str | Path, title: str) -> Path:
    """Latency against rate per policy: the TTFT quantile and the worst class's TBT quantile / its SLO."""
    from schedctl.bench.plots import _pyplot, save

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in results:
        rates = [p.rate for p in res.points]
        line = ax1.plot(rates, [p.ttft_q_s for p in res.points], marker="o", label=res.policy)[0]
        ratio = [max((v / slo.tbt_slo_s(c) for c, v in p.tbt_q_s.items()), default=math.nan) for p in res.points]
        ax2.plot(rates, ratio, marker="o", color=line.get_color(), label=res.policy)
        if res.capacity_rps is not None:
            for ax in (ax1, ax2):
                ax.axvline(res.capacity_rps, color=line.get_color(), linestyle=":", alpha=0.8)
    ax1.axhline(slo.ttft_threshold_s, color="gray", linestyle="--", label=f"threshold {slo.ttft_threshold_s:g} s")
    ax1.set_yscale("log")
    ax1.set_xlabel("request rate (req/s)")
    ax1.set_ylabel(f"TTFT q{slo.ttft_quantile:g} (s)")
    ax1.set_title(title)
    ax2.axhline(1.0, color="gray", linestyle="--", label="SLO")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("request rate (req/s)")
    ax2.set_ylabel(f"TBT q{slo.tbt_quantile:g} / class SLO (worst class)")
    ax2.set_title("dotted: capacity")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return save(fig, path)
