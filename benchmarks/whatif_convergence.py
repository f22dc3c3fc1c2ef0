"""After a load step, how many ticks the controller needs to settle on a best arm, with and without the what-if
replay, and what a replay costs per tick.

    .venv/bin/python benchmarks/whatif_convergence.py [--seeds 5] [--jobs 2] [--horizon 2] [--mode prior]

Scenario: big-prefix traffic (256 groups x 4096-token system prompts) at 4 req/s for 300 s, then 8 req/s for
300 s, on the embedded H100 / Llama-3.1-8B engine, ticks of 10 s. At 4 req/s every order serves the traffic the
same; at 8 req/s FCFS thrashes the prefix cache and k >= 4 is needed. The controller starts on FCFS (its
initial policy), so after the step it must move away from it. Everything else is config/sidecar.sim.toml.

Per seed, in one run each: every static arm (to know which arms are best after the step: those whose P99 TTFT
over the requests arriving after the step is within 10% of the best one's), the controller without replay, and
the controller with replay (``[whatif]`` on, the given mode and horizon). "Ticks to settle": ticks after the
step until the controller's policy is a best arm and stays one until the end of the phase (the phase length if
it never does). Also printed: the P99 TTFT after the step of each run, and per tick the wall time of the
snapshot (``begin_window``) and of the replays of all arms (p50 / p99 over every tick of every seed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from schedctl.bench.scenarios import Scenario, scenario_requests
from schedctl.bench.sweep import pool_map
from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.ktuner import arm_label
from schedctl.controller.service import Service
from schedctl.engine_adapter.replay import SimReplayer
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import parse_policy
from schedctl.settings import load_settings
from schedctl.sim.profiles import config_dir, load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine

WORKLOAD = "gsp:num_groups=256,system_prompt_len=4096"
PHASE_S, LOW_RPS, HIGH_RPS, TICK_S = 300.0, 4.0, 8.0, 10.0
GOOD_WITHIN = 1.10  # an arm is best after the step if its P99 is within 10% of the best arm's


def scenario() -> Scenario:
    return Scenario(name="step", phases=[
        {"duration_s": PHASE_S, "streams": [{"workload": WORKLOAD, "rate": str(LOW_RPS)}]},  # type: ignore[list-item]
        {"duration_s": PHASE_S, "streams": [{"workload": WORKLOAD, "rate": str(HIGH_RPS)}]},  # type: ignore[list-item]
    ])


class Job(BaseModel):
    seed: int
    run: str  # an arm label (static), "adaptive" or "adaptive+whatif"
    params: ControllerParams


class Result(BaseModel):
    seed: int
    run: str
    p99_after_s: float
    policies: list[str]  # the policy chosen at each tick after the step
    snapshot_ms: list[float] = []
    replay_ms: list[float] = []


class TimedReplayer(SimReplayer):
    def __init__(self, adapter: SimAdapter, horizon_windows: int) -> None:
        super().__init__(adapter, horizon_windows)
        self.snapshot_ms: list[float] = []

    def begin_window(self) -> None:
        t0 = time.perf_counter()
        super().begin_window()
        self.snapshot_ms.append((time.perf_counter() - t0) * 1e3)


def run(job: Job) -> Result:
    hw = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
    params = job.params
    static = job.run not in ("adaptive", "adaptive+whatif")
    if static:
        params = params.model_copy(update={"initial_policy": parse_policy(job.run)})
    ad = SimAdapter(new_engine(hw, params.initial_policy), scenario_requests(scenario(), job.seed), TICK_S,
                    keep_ttfts=True)
    replayer = TimedReplayer(ad, params.whatif.horizon_windows) if params.whatif.enabled else None
    ctl = Controller(params, run_id=job.run)
    if static:
        ctl.pin(params.initial_policy)
    svc = Service(ctl, ad, clock=lambda: ad.now_s, replayer=replayer)
    after: list[str] = []
    replay_ms: list[float] = []
    first_after = None
    while not ad.done() and ad.now_s < 2 * PHASE_S + 600:
        d = svc.tick()
        if d.whatif is not None:
            replay_ms.append(d.whatif.wall_ms)
        if PHASE_S < d.time_s <= 2 * PHASE_S:
            after.append(d.policy_label)
            if first_after is None:
                assert ad.ttfts_s is not None
                first_after = len(ad.ttfts_s)
    # P99 TTFT of the requests whose first token came after the step (and of those still waiting at the end)
    assert ad.ttfts_s is not None
    ttfts = np.concatenate([np.frombuffer(ad.ttfts_s, dtype=float)[first_after or 0:], ad.waiting_ages_s()])
    return Result(seed=job.seed, run=job.run, p99_after_s=float(np.quantile(ttfts, 0.99)), policies=after,
                  snapshot_ms=replayer.snapshot_ms if replayer is not None else [], replay_ms=replay_ms)


def ticks_to_settle(policies: list[str], good: set[str]) -> int:
    """Ticks until the policy is in ``good`` and stays there (len(policies) if it never settles)."""
    settle = len(policies)
    for i in range(len(policies) - 1, -1, -1):
        if policies[i] not in good:
            break
        settle = i
    return settle + 1 if settle < len(policies) else len(policies)


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.quantile(values, 0.5):.1f} / {np.quantile(values, 0.99):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--horizon", type=int, default=None, help="replayed windows (default: the settings')")
    ap.add_argument("--mode", choices=["prior", "filter"], default=None, help="default: the settings'")
    args = ap.parse_args()
    settings = load_settings(config_dir() / "sidecar.sim.toml")
    base = settings.controller_params().model_copy(update={"initial_policy": parse_policy("fcfs")})
    wi: dict[str, Any] = {"enabled": True}
    if args.horizon is not None:
        wi["horizon_windows"] = args.horizon
    if args.mode is not None:
        wi["mode"] = args.mode
    with_replay = base.model_copy(update={"whatif": base.whatif.model_copy(update=wi)})
    arms = [arm_label(k) for k in base.tuner.arms]
    jobs = [Job(seed=s, run=r, params=with_replay if r == "adaptive+whatif" else base)
            for s in range(args.seeds) for r in [*arms, "adaptive", "adaptive+whatif"]]
    t0 = time.perf_counter()
    results = pool_map(run, jobs, args.jobs)
    w = with_replay.whatif
    print(f"load step {LOW_RPS:g} -> {HIGH_RPS:g} req/s at t={PHASE_S:g} s ({WORKLOAD}), ticks of {TICK_S:g} s, "
          f"{int(PHASE_S / TICK_S)} ticks after the step; replay: mode {w.mode}, horizon {w.horizon_windows} "
          f"window(s), arms {w.arms}; wall {time.perf_counter() - t0:.0f} s")
    print(f"{'seed':>4} {'best arms after the step':28} {'ticks w/o':>9} {'ticks with':>10} "
          f"{'P99 w/o (s)':>11} {'P99 with (s)':>12} {'P99 best (s)':>12}")
    settle: dict[str, list[int]] = {"adaptive": [], "adaptive+whatif": []}
    for s in range(args.seeds):
        mine = {r.run: r for r in results if r.seed == s}
        best = min(mine[a].p99_after_s for a in arms)
        good = {a for a in arms if mine[a].p99_after_s <= GOOD_WITHIN * best}
        for name in settle:
            settle[name].append(ticks_to_settle(mine[name].policies, good))
        print(f"{s:4d} {','.join(sorted(good)):28} {settle['adaptive'][-1]:9d} {settle['adaptive+whatif'][-1]:10d} "
              f"{mine['adaptive'].p99_after_s:11.2f} {mine['adaptive+whatif'].p99_after_s:12.2f} {best:12.2f}")
    print(f"median ticks to settle: without replay {statistics.median(settle['adaptive']):g}, "
          f"with replay {statistics.median(settle['adaptive+whatif']):g} (max {max(settle['adaptive'])} vs "
          f"{max(settle['adaptive+whatif'])})")
    snap = [x for r in results for x in r.snapshot_ms]
    replay = [x for r in results for x in r.replay_ms]
    print(f"cost per tick, wall ms p50 / p99: snapshot {quantiles(snap)}, replays of {len(base.tuner.arms)} arms "
          f"{quantiles(replay)} ({len(replay)} ticks)")


if __name__ == "__main__":
    main()
