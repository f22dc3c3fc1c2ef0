"""`schedctl bench adaptive`: the adaptive controller against every static policy, over named scenarios.

Like with like: every run — adaptive or static — goes through the same loop, ``Service.tick`` over the embedded
engine's adapter, one window of ``tick_interval_s`` simulated seconds per tick. A static policy is the same
controller with that policy pinned, so only the policy differs. After the scenario's last arrival the ticks go
on until every request has had its first token (or ``drain_limit_s`` more seconds pass; a request still waiting
then counts with the wait it has had so far, a lower bound of its TTFT).

Per scenario and seed the figure is the P99 TTFT over all requests of the run; per scenario the figures are the
mean over seeds. Ratios: adaptive / best static k in hindsight (the static arm with the lowest mean P99 of that
scenario), and adaptive (or any policy) / FCFS and / LPM.

``adaptive+whatif`` is the adaptive controller with the what-if replay on (``[whatif]``, controller/whatif.py;
the embedded engine's replayer, engine_adapter/replay.py), so one table can hold the controller with and without
it; its runs also report the wall time of a tick's replays.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schedctl.bench.scenarios import Scenario, scenario_requests
from schedctl.bench.sweep import pool_map
from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.decision import Decision
from schedctl.controller.service import Service
from schedctl.engine_adapter.replay import SimReplayer
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.arms import spec_for
from schedctl.policies.slai import with_tbt_slack, with_theta
from schedctl.policies.spec import SLAISpec, parse_policy, policy_label
from schedctl.sim.engine import EngineConfig
from schedctl.sim.run import Hardware, new_engine

ADAPTIVE = "adaptive"
ADAPTIVE_WHATIF = "adaptive+whatif"
ADAPTIVES = (ADAPTIVE, ADAPTIVE_WHATIF)
SWITCHING = "switching oracle"  # the best static policy per phase, in hindsight (switching.py)


class RunJob(BaseModel):
    """One scenario × seed × policy (picklable: goes to a worker process)."""

    model_config = ConfigDict(frozen=True)

    scenario: Scenario
    seed: int
    policy: str  # "adaptive", "adaptive+whatif" or a static policy label
    controller: ControllerParams
    hardware: Hardware
    engine: EngineConfig = EngineConfig()
    tick_interval_s: float = 10.0
    drain_limit_s: float = 1800.0
    keep_timeline: bool = False
    schedule: tuple[str, ...] | None = None  # a static policy per phase, pushed at each phase's start (switching.py)
    warmup_s: float = Field(default=0.0, ge=0)  # requests arriving before this are left out of every figure


class TickPoint(BaseModel):
    time_s: float
    policy: str
    reason: str
    arrival_rate_rps: float
    queue_len: int
    ttft_p99_s: float | None
    cache_hit_rate: float | None
    tbt_p99_s: float | None = None
    knob: str | None = None  # the DeadlineTuner's knob (SLAI): theta or tbt_slack_s
    knob_value: float | None = None


def tick_point(d: Decision) -> TickPoint:
    w = d.window
    knob = d.deadline or {}
    return TickPoint(time_s=d.time_s, policy=d.policy_label, reason=d.reason, arrival_rate_rps=w.arrival_rate_rps,
                     queue_len=w.queue_len, ttft_p99_s=w.ttft_p99_s, cache_hit_rate=w.cache_hit_rate,
                     tbt_p99_s=w.tbt_p99_s, knob=knob.get("knob"), knob_value=knob.get("value"))


def run_ttfts(adapter: SimAdapter) -> np.ndarray:
    """Every TTFT of a finished run, plus the wait so far of requests still without a first token."""
    return run_arrivals_ttfts(adapter)[1]


def run_arrivals_ttfts(adapter: SimAdapter) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times, TTFTs) of every request of a finished run, as :func:`run_ttfts` counts them."""
    assert adapter.ttfts_s is not None and adapter.ttft_arrivals_s is not None, \
        "the adapter must keep TTFTs (keep_ttfts=True)"
    ttfts = np.frombuffer(adapter.ttfts_s, dtype=float)
    arrivals = np.frombuffer(adapter.ttft_arrivals_s, dtype=float)
    waiting = adapter.waiting_ages_s()
    return np.concatenate([arrivals, adapter.now_s - waiting]), np.concatenate([ttfts, waiting])


def phase_p99s(scenario: Scenario, arrivals_s: np.ndarray, ttfts_s: np.ndarray) -> list[float]:
    """The P99 TTFT of the requests arriving in each phase of the scenario (NaN for a phase with none)."""
    edges = [*scenario.phase_starts_s(), math.inf]
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = ttfts_s[(arrivals_s >= lo) & (arrivals_s < hi)]
        out.append(float(np.quantile(sel, 0.99)) if sel.size else math.nan)
    return out


class RunResult(BaseModel):
    scenario: str
    seed: int
    policy: str
    requests: int
    unserved: int  # requests with no first token when the drain limit was reached
    ttft_p50_s: float
    ttft_p99_s: float
    tbt_p99_s: float = math.nan
    ticks: int
    changes: int  # ticks whose decision changed the policy
    reasons: dict[str, int]
    timeline: list[TickPoint] = []
    replay_ms_p50: float | None = None  # wall time of one tick's what-if replays (adaptive+whatif runs)
    replay_ms_p99: float | None = None
    attainment: float = math.nan  # share of requests with TTFT <= the objective's target (unserved: missed)
    cache_hit_rate: float = math.nan  # prompt tokens found cached / looked up, whole run
    phase_ttft_p99_s: list[float] = []  # P99 TTFT of the requests arriving in each phase
    schedule: list[str] | None = None  # the switching oracle's policy per phase


def run_job(job: RunJob) -> RunResult:
    static = job.policy not in ADAPTIVES
    params = job.controller
    schedule = [parse_policy(p) for p in job.schedule] if job.schedule is not None else None
    if schedule is not None:
        if len(schedule) != len(job.scenario.phases):
            raise ValueError(f"schedule has {len(schedule)} policies for {len(job.scenario.phases)} phases")
        params = params.model_copy(update={"initial_policy": schedule[0]})
    elif static:
        params = params.model_copy(update={"initial_policy": parse_policy(job.policy)})
    if job.policy == ADAPTIVE_WHATIF:
        params = params.model_copy(update={"whatif": params.whatif.model_copy(update={"enabled": True})})
    engine = new_engine(job.hardware, params.initial_policy, job.engine)
    adapter = SimAdapter(engine, scenario_requests(job.scenario, job.seed), job.tick_interval_s, keep_ttfts=True)
    controller = Controller(params, run_id=f"{job.scenario.name}-{job.seed}-{job.policy}")
    if static:
        controller.pin(params.initial_policy)
    replayer = SimReplayer(adapter, params.whatif.horizon_windows) if params.whatif.enabled and not static else None
    service = Service(controller, adapter, log=None, clock=lambda: adapter.now_s, replayer=replayer)
    end_s = job.scenario.duration_s + job.drain_limit_s
    reasons: dict[str, int] = {}
    changes = 0
    timeline: list[TickPoint] = []
    replay_ms: list[float] = []
    starts = job.scenario.phase_starts_s()
    phase = 0
    while not adapter.done() and adapter.now_s < end_s:
        # the switching oracle: the tick whose window ends at (or past) a phase's start pushes that phase's policy
        while schedule is not None and phase + 1 < len(starts) and adapter.now_s + job.tick_interval_s >= \
                starts[phase + 1] - 1e-9:
            phase += 1
            service.pin(schedule[phase])
        d = service.tick()
        if d.whatif is not None:
            replay_ms.append(d.whatif.wall_ms)
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        changes += d.changed
        if job.keep_timeline:
            timeline.append(tick_point(d))
    arrivals, allv = run_arrivals_ttfts(adapter)
    if job.warmup_s > 0:
        kept = arrivals >= job.warmup_s
        arrivals, allv = arrivals[kept], allv[kept]
    unserved = int(adapter.waiting_ages_s().size)
    cache = engine.cache
    return RunResult(
        scenario=job.scenario.name, seed=job.seed, policy=job.policy, requests=int(allv.size),
        unserved=unserved, ttft_p50_s=float(np.quantile(allv, 0.5)) if allv.size else math.nan,
        ttft_p99_s=float(np.quantile(allv, 0.99)) if allv.size else math.nan,
        tbt_p99_s=float(engine.tbt.quantile(0.99)), ticks=service.controller.tick,
        changes=changes, reasons=reasons, timeline=timeline,
        replay_ms_p50=float(np.quantile(replay_ms, 0.5)) if replay_ms else None,
        replay_ms_p99=float(np.quantile(replay_ms, 0.99)) if replay_ms else None,
        attainment=float(np.mean(allv <= params.objective.ttft_target_s)) if allv.size else math.nan,
        cache_hit_rate=cache.hit_tokens / cache.lookup_tokens if cache.lookup_tokens else math.nan,
        phase_ttft_p99_s=phase_p99s(job.scenario, arrivals, allv), schedule=job.schedule and list(job.schedule),
    )


class BenchRow(BaseModel):
    """One scenario × policy, mean over seeds. The JSON that `schedctl bench adaptive --json` prints."""

    scenario: str
    kind: str
    policy: str
    seeds: int
    ttft_p99_s: float
    ratio_to_best_static: float
    ratio_to_fcfs: float
    ratio_to_lpm: float
    best_static: str
    changes: float = 0.0
    replay_ms_p50: float | None = None  # adaptive+whatif: median wall time of a tick's replays (mean over seeds)
    attainment: float = math.nan  # share of requests within the TTFT target (mean over seeds)
    cache_hit_rate: float = math.nan
    ratio_to_switching: float = math.nan  # P99 / the switching oracle's (NaN: no oracle run)
    schedule: list[str] | None = None  # the switching oracle's policy per phase (seed 0)


def static_policies(params: ControllerParams) -> list[str]:
    """What the adaptive controller is compared with: every k arm; in deadline mode (SLAI) its policy with the
    knob held at the tuner's minimum, initial and maximum."""
    start = params.initial_policy
    if params.deadline is not None and isinstance(start, SLAISpec):
        d = params.deadline
        setter = with_theta if d.knob == "theta" else with_tbt_slack
        values = sorted({d.tuner.knob_min, d.tuner.knob_initial, d.tuner.knob_max})
        return [policy_label(setter(start, v)) for v in values]
    return [policy_label(spec_for(k)) for k in params.tuner.arms]


def run_jobs(jobs: Sequence[RunJob], workers: int, on_done: Callable[[], None] | None = None) -> list[RunResult]:
    """Every job, in a pool of ``workers`` processes (bench.sweep.pool_map); results in the order of ``jobs``."""
    return pool_map(run_job, jobs, workers, on_done)


def summarize(scenarios: Sequence[Scenario], results: Sequence[RunResult], statics: Sequence[str]) -> list[BenchRow]:
    rows: list[BenchRow] = []
    for sc in scenarios:
        per: dict[str, list[RunResult]] = {}
        for r in results:
            if r.scenario == sc.name:
                per.setdefault(r.policy, []).append(r)
        mean = {p: float(np.mean([r.ttft_p99_s for r in rs])) for p, rs in per.items()}
        best = min((p for p in statics if p in mean), key=lambda p: mean[p])
        for p in [*ADAPTIVES, SWITCHING, *statics]:
            if p not in mean:
                continue
            rows.append(BenchRow(
                scenario=sc.name, kind=sc.kind, policy=p, seeds=len(per[p]), ttft_p99_s=mean[p],
                ratio_to_best_static=mean[p] / mean[best], ratio_to_fcfs=mean[p] / mean.get("fcfs", math.nan),
                ratio_to_lpm=mean[p] / mean.get("lpm", math.nan), best_static=best,
                changes=float(np.mean([r.changes for r in per[p]])),
                replay_ms_p50=_mean_or_none([r.replay_ms_p50 for r in per[p]]),
                attainment=float(np.mean([r.attainment for r in per[p]])),
                cache_hit_rate=float(np.mean([r.cache_hit_rate for r in per[p]])),
                ratio_to_switching=mean[p] / mean.get(SWITCHING, math.nan),
                schedule=per[p][0].schedule,
            ))
    return rows


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def k_value(label: str) -> float:
    """A policy label on the k axis: fcfs 1, klpm:K K, lpm (and klpm:inf) drawn above the largest finite k."""
    if label == "fcfs":
        return 1.0
    if label in ("lpm", "klpm:inf"):
        return math.inf
    if label.startswith("klpm:"):
        return float(label.split(":", 1)[1])
    return math.nan
