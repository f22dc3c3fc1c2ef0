"""Print what one sidecar tick costs on the embedded engine, and whether memory stays flat over a long run.

    .venv/bin/python benchmarks/tick_cost.py [--hours 24] [--tick-s 10] [--workload gsp] [--mean-rps 6]

The sidecar (controller, guard, decision log with fsync per line, metrics; no API) runs against the embedded
engine through a compressed-nothing day: a diurnal rate schedule over ``--hours`` simulated hours, one tick every
``--tick-s`` simulated seconds. Per tick it times, in wall milliseconds:

* ``observe``: the adapter's window, split into the engine simulating the window (``engine.run``: the engine's
  work, which a real engine does on its own) and assembling the Observation (the sidecar's part);
* ``decide``: Controller.step;  ``log``: the decision line, written and fsynced;  ``apply``: the policy push;
* ``tick``: observe (assembly only) + decide + log + apply — the sidecar's own cost per tick (target < 20 ms).

Memory: resident set size sampled every simulated hour (no assertions; numbers to read).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from schedctl.controller.core import Controller
from schedctl.controller.decision_log import DecisionLog
from schedctl.controller.service import Service, ServiceMetrics
from schedctl.engine_adapter.base import Observation
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import PolicySpec
from schedctl.settings import load_settings
from schedctl.sim.profiles import config_dir, load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.workloads.registry import make_requests


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class TimedSim(SimAdapter):
    """The sim adapter with the engine's share of observe() and the apply timed separately."""

    run_s: list[float]
    observe_s: list[float]
    apply_s: list[float]

    def observe(self) -> Observation:
        start = self.now_s
        t0 = time.perf_counter()
        self.engine.run(until_s=start + self.window_s)
        t1 = time.perf_counter()
        self.now_s = start + self.window_s
        obs = self._window(start, self.now_s)
        t2 = time.perf_counter()
        self.run_s.append(t1 - t0)
        self.observe_s.append(t2 - t1)
        return obs

    def apply(self, spec: PolicySpec) -> None:
        t0 = time.perf_counter()
        super().apply(spec)
        self.apply_s.append(time.perf_counter() - t0)


class TimedController(Controller):
    decide_s: list[float]

    def step(self, obs: Observation):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        d = super().step(obs)
        self.decide_s.append(time.perf_counter() - t0)
        return d


class TimedLog(DecisionLog):
    log_s: list[float]

    def write(self, decision):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        super().write(decision)
        self.log_s.append(time.perf_counter() - t0)


def pct(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values) * 1e3, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--tick-s", type=float, default=10.0)
    parser.add_argument("--workload", default="gsp")
    parser.add_argument("--mean-rps", type=float, default=6.0)
    parser.add_argument("--amplitude-rps", type=float, default=4.0)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()

    settings = load_settings(config_dir() / "sidecar.sim.toml")
    hw = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
    duration_s = args.hours * 3600
    rate = f"diurnal:mean_rps={args.mean_rps},amplitude_rps={args.amplitude_rps},period_s=86400"
    params = settings.controller_params()
    adapter = TimedSim(new_engine(hw, params.initial_policy), make_requests(args.workload, rate, duration_s=duration_s,
                                                                             seed=0), args.tick_s)
    adapter.run_s, adapter.observe_s, adapter.apply_s = [], [], []
    controller = TimedController(params, run_id="tick-cost")
    controller.decide_s = []
    with tempfile.TemporaryDirectory() as tmp:
        log = TimedLog(Path(tmp) / "decisions.jsonl", fsync=not args.no_fsync)
        log.log_s = []
        service = Service(controller, adapter, log, clock=lambda: adapter.now_s, metrics=ServiceMetrics())
        tick_s: list[float] = []
        rss = [(0.0, rss_mb())]
        next_hour = 3600.0
        wall0 = time.perf_counter()
        while adapter.now_s < duration_s or not adapter.done():
            n_obs, n_run = len(adapter.observe_s), len(adapter.run_s)
            t0 = time.perf_counter()
            service.tick()
            total = time.perf_counter() - t0
            engine_s = sum(adapter.run_s[n_run:])
            tick_s.append(total - engine_s)
            assert len(adapter.observe_s) == n_obs + 1
            if adapter.now_s >= next_hour:
                rss.append((adapter.now_s / 3600, rss_mb()))
                next_hour += 3600.0
            if adapter.now_s > duration_s + 3600:
                break
        wall = time.perf_counter() - wall0
        log.close()
    print(f"{len(tick_s)} ticks of {args.tick_s:g} s over {adapter.now_s / 3600:.1f} simulated hours "
          f"({args.workload}, {rate}), {adapter.engine.arrivals} requests, wall {wall:.1f} s")
    print("per tick, wall milliseconds        p50      p99      max")
    rows = [("engine.run (the engine's own work)", adapter.run_s), ("observe: window assembly", adapter.observe_s),
            ("decide: Controller.step", controller.decide_s), ("log: write + fsync", log.log_s),
            ("apply (ticks that pushed)", adapter.apply_s), ("tick: observe + decide + log + apply", tick_s)]
    for name, values in rows:
        print(f"  {name:34s} {pct(values, 0.5):8.3f} {pct(values, 0.99):8.3f} {pct(values, 1.0):8.3f}")
    print("resident memory (MB) by simulated hour:")
    print("  " + "  ".join(f"{h:.0f}h:{mb:.0f}" for h, mb in rss))
    first_hour = rss[1][1] if len(rss) > 1 else rss[0][1]
    print(f"  growth from hour 1 to the end: {rss[-1][1] - first_hour:+.1f} MB")


if __name__ == "__main__":
    main()
