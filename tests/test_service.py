"""The shell: an unreachable engine holds, falls back and gets the learned policy back; nothing crashes it."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.decision_log import read_decisions
from schedctl.controller.service import Service, ServiceMetrics, open_sidecar, run_realtime, run_simulated
from schedctl.engine_adapter.base import EngineUnavailable, Observation, UnsupportedPolicy
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import PolicySpec, parse_policy
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.workloads.registry import make_requests

HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
GSP = "gsp:num_groups=256,system_prompt_len=4096"


def sim(rate: float = 7.5, duration_s: float = 900.0, policy: str = "klpm:4") -> SimAdapter:
    eng = new_engine(HW, parse_policy(policy))
    return SimAdapter(eng, make_requests(GSP, rate, duration_s=duration_s, seed=2), 10.0)


class Flaky:
    """Wraps an adapter; while ``down`` every call raises EngineUnavailable (the engine itself keeps running)."""

    def __init__(self, inner: SimAdapter) -> None:
        self.inner, self.down = inner, False
        self.applied: list[PolicySpec] = []

    def capabilities(self) -> Any:
        return self.inner.capabilities()

    def observe(self) -> Observation:
        obs = self.inner.observe()
        if self.down:
            raise EngineUnavailable("connection refused")
        return obs

    def apply(self, spec: PolicySpec) -> None:
        if self.down:
            raise EngineUnavailable("connection refused")
        self.applied.append(spec)
        self.inner.apply(spec)


def test_unavailable_engine_hold_then_safe_policy_then_learned_policy_pushed_within_one_tick() -> None:
    inner = sim()
    ad = Flaky(inner)
    params = ControllerParams(guard={"stale_hold_ticks": 2, "safe_policy": "fcfs"})
    svc = Service(Controller(params), ad, clock=lambda: inner.now_s)
    for _ in range(12):
        svc.tick()
    learned = svc.controller.target
    assert learned != parse_policy("fcfs")
    ad.down = True
    outage = [svc.tick() for _ in range(5)]
    assert [d.reason for d in outage] == ["guard", "guard", "fallback", "fallback", "fallback"]
    assert all(d.window.stale and "unavailable" in (d.window.stale_reason or "") for d in outage)
    assert all(d.policy == learned for d in outage[:2]) and all(d.policy == parse_policy("fcfs") for d in outage[2:])
    # a push to an engine that does not answer would not land (or land by chance as it returns): deferred
    assert all(not d.push and "deferred" in (d.reconcile or "") for d in outage[2:])
    assert inner.engine.policy == learned
    ad.down = False
    back = svc.tick()  # it answers, still running the learned policy: nothing to push, no fallback ever pushed
    assert back.policy == learned and not back.push and inner.engine.policy == learned
    assert parse_policy("fcfs") not in ad.applied


def test_metrics_outage_with_a_reachable_engine_gets_the_safe_policy_then_the_learned_one() -> None:
    inner = sim()

    class StaleMetrics(Flaky):
        def observe(self) -> Observation:
            obs = self.inner.observe()
            return obs.model_copy(update={"stale": True, "stale_reason": "scrape timed out"}) if self.down else obs

        def apply(self, spec: PolicySpec) -> None:
            self.applied.append(spec)
            self.inner.apply(spec)

    ad = StaleMetrics(inner)
    svc = Service(Controller(ControllerParams(guard={"stale_hold_ticks": 1, "safe_policy": "fcfs"})), ad,
                  clock=lambda: inner.now_s)
    for _ in range(12):
        svc.tick()
    learned = svc.controller.target
    ad.down = True
    svc.tick()
    d = svc.tick()
    assert d.reason == "fallback" and d.applied and inner.engine.policy == parse_policy("fcfs")
    ad.down = False
    d = svc.tick()
    assert d.policy == learned and d.applied and inner.engine.policy == learned


def test_adapter_bugs_and_refusals_never_stop_the_loop() -> None:
    inner = sim()

    class Broken(Flaky):
        calls = 0
        pushes = 0

        def observe(self) -> Observation:
            self.calls += 1
            if self.calls % 3 == 0:
                raise KeyError("a bug in the adapter")
            return self.inner.observe().model_copy(update={"active_policy": None})  # reports nothing

        def apply(self, spec: PolicySpec) -> None:
            self.pushes += 1
            raise UnsupportedPolicy(f"{spec.kind} refused")

    ad = Broken(inner)
    svc = Service(Controller(), ad, clock=lambda: inner.now_s, metrics=ServiceMetrics())
    ds = [svc.tick() for _ in range(40)]
    assert sum(d.window.stale for d in ds) == 13
    assert any("adapter failure" in (d.window.stale_reason or "") for d in ds)
    tried = [d for d in ds if d.push]
    assert all(not d.applied and "UnsupportedPolicy" in (d.apply_error or "") for d in tried)
    # a refusal is a condition with backoff (2, 4, 8, ... ticks), not a retry every tick
    gaps = [b.tick_id - a.tick_id for a, b in itertools.pairwise(tried)]
    assert ad.pushes == len(tried) < 10 and gaps == sorted(gaps) and gaps[-1] >= 8
    cond = ds[-1].conditions[0]
    assert cond["kind"] == "unsupported" and cond["failures"] == len(tried)
    assert "accepts" in cond["message"]  # capabilities() was asked what the engine takes
    assert svc.metrics is not None and svc.metrics.apply_errors._value.get() == len(tried)


def test_simulated_run_logs_one_line_per_tick(tmp_path: Path) -> None:
    ad = sim(rate=3.0, duration_s=200.0)
    svc, server = open_sidecar(ControllerParams(), ad, run_id="x", clock=lambda: ad.now_s,
                               log_path=tmp_path / "log.jsonl")
    assert server is None
    ticks = run_simulated(svc, ad.done)
    svc.close()
    back, torn = read_decisions(tmp_path / "log.jsonl")
    assert torn == 0 and [d.tick_id for d in back] == list(range(1, ticks + 1))
    assert back[-1].time_s == ad.now_s


def test_realtime_driver_ticks_on_apscheduler_until_stopped() -> None:
    ad = sim(rate=3.0)
    svc = Service(Controller(), ad, clock=time.time)
    stop = threading.Event()
    seen: list[int] = []

    def on_tick(d: Any) -> None:
        seen.append(d.tick_id)
        if len(seen) >= 3:
            stop.set()

    t = threading.Thread(target=run_realtime, args=(svc, 0.05, stop, on_tick))
    t.start()
    t.join(timeout=20)
    assert not t.is_alive()
    assert seen[:3] == [1, 2, 3]


def test_sidecar_against_an_unreachable_sglang_server_holds_falls_back_and_exits_cleanly(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from schedctl.sim.profiles import config_dir

    env = {**os.environ, "SCHEDCTL_SERVICE__TICK_INTERVAL_S": "0.2", "SCHEDCTL_ENGINE__SGLANG__RETRIES": "0",
           "SCHEDCTL_ENGINE__SGLANG__BASE_URL": "http://127.0.0.1:9", "SCHEDCTL_API__ENABLED": "false",
           "SCHEDCTL_LOG__PATH": str(tmp_path / "log.jsonl"), "SCHEDCTL_SERVICE__MODE": "active"}
    out = subprocess.run([sys.executable, "-c", "from schedctl.cli import main; main()", "run", "--config",
                          str(config_dir() / "sidecar.sglang.toml"), "--ticks", "4"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    back, torn = read_decisions(tmp_path / "log.jsonl")
    assert [d.reason for d in back] == ["guard", "guard", "fallback", "fallback"] and torn == 0
    assert all(d.window.stale and not d.applied and not d.push for d in back)
    assert all("deferred" in (d.reconcile or "") for d in back)  # nothing answers: no push is attempted


def test_metrics_show_the_policy_over_time_stale_windows_fallbacks_and_the_slo() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    inner = sim()
    ad = Flaky(inner)
    params = ControllerParams(guard={"stale_hold_ticks": 1, "safe_policy": "fcfs"},
                              objective={"ttft_target_s": 1.5})
    svc, _ = open_sidecar(params, ad, run_id="m", clock=lambda: inner.now_s)
    assert svc.metrics is not None

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = generate_latest(svc.metrics.registry).decode()  # type: ignore[union-attr]
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    first = svc.tick()
    assert samples()[("schedctl_policy", (("policy", first.policy_label),))] == 1.0
    assert samples()[("schedctl_slo_ttft_p99_seconds", ())] == 1.5
    ad.down = True
    outage = [svc.tick() for _ in range(3)]
    assert outage[-1].reason == "fallback" and outage[-1].policy_label == "fcfs"
    now = samples()
    policies = {dict(labels)["policy"]: v for (name, labels), v in now.items() if name == "schedctl_policy"}
    assert policies == {"fcfs": 1.0}  # one series: the policy that runs now
    assert now[("schedctl_stale_windows_total", ())] == 3.0
    assert now[("schedctl_decisions_total", (("reason", "fallback"),))] == sum(d.reason == "fallback" for d in outage)
