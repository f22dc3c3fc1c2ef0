"""Fault injection: the sidecar (Service + Controller + SGLangAdapter) against the stand-in SGLang server over
127.0.0.1 (tests/sglang_standin.py) while it dies, restarts without the policy, serves garbage, NaN, negative and
huge values, is slow, and answers pushes with HTTP 500 or a body that is not JSON.

Every case holds: no exception out of a tick and no traceback logged; no value from a stale window reaches the
learner; after ``stale_hold_ticks`` stale ticks the decision is the fallback; the learned (or pinned) policy is
pushed again in the first tick the engine answers with fresh data; no fallback push at recovery.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sglang_standin import FakeSGLang, StandInServer, running_standin

from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.decision import Decision
from schedctl.controller.decision_log import DecisionLog, read_decisions
from schedctl.controller.service import Service
from schedctl.engine_adapter.sglang import channel
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.policies.spec import PolicySpec, parse_policy

LEARNED, SAFE, PIN = parse_policy("klpm:2"), parse_policy("fcfs"), parse_policy("klpm:8")
HOLD = 2  # stale_hold_ticks
FAULT_TICKS = 5


class SpyLearner:
    """Wraps the KTuner's learner and records every reward it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.updates = inner, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update(self, arm: Any, reward: float, context: Any = None) -> None:
        assert math.isfinite(reward) and 0.0 <= reward <= 1.0
        self.updates.append((arm, reward))
        self.inner.update(arm, reward, context)


@dataclass
class Sidecar:
    server: StandInServer
    service: Service
    spy: SpyLearner
    log_path: Path
    t_s: float = 0.0

    @property
    def fake(self) -> FakeSGLang:
        return self.server.fake

    def tick(self, traffic: bool = True) -> Decision:
        """Ten seconds of traffic on the engine (30 requests, a queue of 5), then one sidecar tick."""
        self.t_s += 10.0
        if traffic:
            for _ in range(30):
                self.fake.metrics.finish(0.3, prompt=100, cached=50)
            self.fake.metrics.set_gauges(num_queue_reqs=5, num_running_reqs=4, token_usage=0.5)
        return self.service.tick()

    def engine_runs(self) -> tuple[int, int]:
        return self.fake.plugin_state[channel.KEY_KIND], self.fake.plugin_state[channel.KEY_K]


def code(spec: PolicySpec) -> tuple[int, int]:
    enc = channel.encode_policy(spec, 1)
    return enc[channel.KEY_KIND], enc[channel.KEY_K]


@pytest.fixture()
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    with running_standin() as server:
        params = ControllerParams(initial_policy="klpm:2", guard={"stale_hold_ticks": HOLD, "safe_policy": "fcfs"})
        controller = Controller(params)
        spy = SpyLearner(controller.ktuner.learner)
        controller.ktuner.learner = spy  # type: ignore[assignment]
        box: list[Sidecar] = []
        adapter = SGLangAdapter(server.url, timeout_s=1.5, retries=0, backoff_s=0.0, clock=lambda: box[0].t_s,
                                sleep=lambda _s: None)
        log = DecisionLog(tmp_path / "decisions.jsonl", fsync=False)
        service = Service(controller, adapter, log, clock=lambda: box[0].t_s)
        box.append(Sidecar(server, service, spy, tmp_path / "decisions.jsonl"))
        try:
            yield box[0]
        finally:
            service.close()
            adapter.close()


def _mangled(value: str) -> Callable[[Sidecar], None]:
    """Serve the engine's real metrics text with every sample value replaced by ``value``."""

    def fault(s: Sidecar) -> None:
        text = s.fake.metrics.text()
        s.fake.metrics_text = re.sub(r"^([^#\s][^\n]*?) \S+$", rf"\1 {value}", text, flags=re.M)

    return fault


def _die(s: Sidecar) -> None:
    s.server.die()


def _restart_without_policy(s: Sidecar) -> None:
    s.fake.lose_state()
    s.server.start()


def _set(**attrs: Any) -> Callable[[Sidecar], None]:
    def f(s: Sidecar) -> None:
        for k, v in attrs.items():
            setattr(s.fake, k, v)

    return f


# case -> (fault, heal, reachable while faulty, engine keeps our policy through it)
OUTAGES: dict[str, tuple[Callable[[Sidecar], None], Callable[[Sidecar], None], bool, bool]] = {
    "dies, restarts without the policy": (_die, _restart_without_policy, False, False),
    "unreachable, back as before": (_die, lambda s: s.server.start(), False, True),
    "slow (answers after the timeout)": (_set(delay_s=2.0), _set(delay_s=0.0), False, True),
    "HTTP 500 on every path": (_set(status=500), _set(status=200), False, True),
    "garbage metrics text": (_set(metrics_text="<html>502 Bad Gateway</html>"), _set(metrics_text=None), False, True),
    "NaN metrics": (_mangled("NaN"), _set(metrics_text=None), True, True),
    "negative metrics": (_mangled("-5"), _set(metrics_text=None), True, True),
    "huge metrics (1e300)": (_mangled("1e300"), _set(metrics_text=None), True, True),
}


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


CASES = [(case, False) for case in OUTAGES] + [("dies, restarts without the policy", True), ("NaN metrics", True)]


@pytest.mark.parametrize(("case", "pinned"), CASES, ids=[c + (", pinned" if p else "") for c, p in CASES])
def test_outage_holds_falls_back_and_repushes_within_one_tick(
    sidecar: Sidecar, case: str, pinned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    fault, heal, reachable, keeps_policy = OUTAGES[case]
    want = PIN if pinned else LEARNED
    caplog.set_level(logging.WARNING)
    if pinned:
        sidecar.service.pin(PIN)
    warm = [sidecar.tick() for _ in range(6)]
    assert warm[0].push and warm[0].applied and sidecar.engine_runs() == code(want)
    assert not any(d.push for d in warm[1:])  # the engine reports it runs our policy: nothing to do
    generation = sidecar.service.adapter.engine_generation  # type: ignore[attr-defined]
    learned_before = len(sidecar.spy.updates)
    pushes_before = len(sidecar.fake.pushes)

    fault(sidecar)
    outage = [sidecar.tick() for _ in range(FAULT_TICKS)]
    assert all(d.window.stale for d in outage), [d.window.stale_reason for d in outage]
    assert all(d.learner.reward is None and d.learner.credited is None for d in outage)
    assert len(sidecar.spy.updates) == learned_before  # nothing from a stale window reached the learner
    expect = ["pinned"] * FAULT_TICKS if pinned else ["guard"] * HOLD + ["fallback"] * (FAULT_TICKS - HOLD)
    assert [d.reason for d in outage] == expect
    fallback_pushes = [p for p in sidecar.fake.pushes[pushes_before:] if (p[channel.KEY_KIND], p[channel.KEY_K])
                       == code(SAFE)]
    if not reachable:  # nothing answers: no push is attempted, so none can land by chance at recovery
        assert not any(d.push for d in outage)
        assert all("deferred" in (d.reconcile or "") for d in outage if d.reason == "fallback")
    elif not pinned:  # the engine answers with bad data: the configured fallback reaches it, once
        assert len(fallback_pushes) == 1 and sidecar.engine_runs() == code(SAFE)

    needs_push = not keeps_policy or sidecar.engine_runs() != code(want)  # lost it, or runs the fallback
    heal(sidecar)
    pushes_at_recovery = len(sidecar.fake.pushes)
    back = sidecar.tick()
    assert not back.window.stale and back.policy == want
    assert sidecar.engine_runs() == code(want)  # re-pushed within one tick of the engine answering again
    if needs_push:
        assert back.push and back.applied and back.reconcile
    else:
        assert not back.push  # it still runs ours: nothing to push
    later = [sidecar.tick() for _ in range(3)]
    recovery_pushes = sidecar.fake.pushes[pushes_at_recovery:]
    assert all((p[channel.KEY_KIND], p[channel.KEY_K]) == code(want) for p in recovery_pushes)  # no fallback push
    assert not any(d.push for d in later) and all(d.policy == want for d in later)
    if keeps_policy:  # garbage never looked like a restart
        assert sidecar.service.adapter.engine_generation == generation  # type: ignore[attr-defined]
    no_tracebacks(caplog)
    logged, torn = read_decisions(sidecar.log_path)
    assert torn == 0 and len(logged) == 6 + FAULT_TICKS + 4
    assert max(len(str(d.window.queue_len)) for d in logged) < 4  # no 301-digit queue in the log


def test_restart_between_two_ticks_is_reconciled_in_the_next_tick(sidecar: Sidecar) -> None:
    for _ in range(6):
        sidecar.tick()
    sidecar.server.restart(lose_policy=True)  # no tick sees it down
    d = sidecar.tick()
    assert not d.window.stale and d.push and d.applied and d.policy == LEARNED
    assert "restarted" in (d.reconcile or "") and sidecar.engine_runs() == code(LEARNED)
    assert d.learner.credited is None  # the engine ran its own order in that window: not evidence about ours
    assert not sidecar.tick().push
    shown = subprocess.run([sys.executable, "-c", "from schedctl.cli import main; main()", "decisions",
                            str(sidecar.log_path), "--last", "2"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "300"})
    assert shown.returncode == 0, shown.stderr
    repush = next(line for line in shown.stdout.splitlines() if re.match(r"^\s*7\s", line))
    assert "yes" in repush and "engine restarted" in repush  # the operator sees the re-push and why


@pytest.mark.parametrize("answer", ["http500", "not_json"])
def test_failed_pushes_are_retried_every_tick_until_they_land(sidecar: Sidecar, answer: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(6):
        sidecar.tick()
    sidecar.fake.push_answer = answer  # type: ignore[assignment]
    sidecar.server.restart(lose_policy=True)
    failing = [sidecar.tick() for _ in range(4)]
    assert all(d.push and not d.applied and d.apply_error for d in failing)  # transient: retried each tick
    assert failing[-1].conditions and failing[-1].conditions[0]["kind"] == "apply_failed"
    assert sidecar.engine_runs() == (channel.KIND_OFF, 0)
    sidecar.fake.push_answer = "sglang"
    d = sidecar.tick()
    assert d.push and d.applied and not d.conditions and sidecar.engine_runs() == code(LEARNED)
    no_tracebacks(caplog)


def test_a_refused_policy_is_a_condition_with_backoff_not_a_retry_every_tick(sidecar: Sidecar) -> None:
    for _ in range(3):
        sidecar.tick()
    sidecar.fake.accept_push = False  # SGLang answers [false]: the plugin refuses (UnsupportedPolicy)
    sidecar.server.restart(lose_policy=True)
    ds = [sidecar.tick() for _ in range(20)]
    tried = [d.tick_id for d in ds if d.push]
    assert 2 < len(tried) < 8  # tried after 2, 4, 8 ... ticks
    assert all("not pushed" in (d.reconcile or "") for d in ds if not d.push)
    cond = ds[-1].conditions[0]
    assert cond["kind"] == "unsupported" and "accepts" in cond["message"]
    sidecar.fake.accept_push = True
    ds = [sidecar.tick() for _ in range(cond["retry_at_tick"] - ds[-1].tick_id)]
    assert ds[-1].applied and sidecar.engine_runs() == code(LEARNED)


def _wait_for(what: str, cond: Callable[[], bool], proc: subprocess.Popen[str], limit_s: float = 60.0) -> None:
    """Poll ``cond`` until it holds (a guard against hanging, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"schedctl run ended before {what}: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {limit_s:.0f} s")
        time.sleep(0.05)


def test_schedctl_run_against_a_server_that_is_killed_and_restarts_without_the_policy(tmp_path: Path) -> None:
    """The whole sidecar (``schedctl run``, APScheduler, real time) while the server dies and comes back."""
    from schedctl.sim.profiles import config_dir

    log = tmp_path / "d.jsonl"
    want = parse_policy("klpm:4")  # sidecar.sglang.toml's initial policy; the safe policy is set to fcfs below

    def logged() -> list[Decision]:
        return read_decisions(log)[0] if log.exists() else []

    with running_standin() as server:
        env = {**os.environ, "SCHEDCTL_ENGINE__SGLANG__BASE_URL": server.url,
               "SCHEDCTL_SERVICE__TICK_INTERVAL_S": "0.3", "SCHEDCTL_ENGINE__SGLANG__RETRIES": "0",
               "SCHEDCTL_ENGINE__SGLANG__TIMEOUT_S": "1.0",
               "SCHEDCTL_SERVICE__MODE": "active", "SCHEDCTL_API__ENABLED": "false", "SCHEDCTL_LOG__PATH": str(log),
               "SCHEDCTL_GUARD__SAFE_POLICY": "fcfs", "SCHEDCTL_LOG__FSYNC": "false"}
        proc = subprocess.Popen([sys.executable, "-c", "from schedctl.cli import main; main()", "run", "--config",
                                 str(config_dir() / "sidecar.sglang.toml"), "--ticks", "200"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for("first push", lambda: sidecar_runs(server.fake) == code(want) and len(logged()) >= 3, proc)
            server.die()
            _wait_for("fallback decision", lambda: any(d.reason == "fallback" for d in logged()), proc)
            server.fake.lose_state()
            server.start()
            _wait_for("re-push", lambda: sidecar_runs(server.fake) == code(want), proc)
            _wait_for("two ticks after it", lambda: sum(not d.window.stale for d in logged()[-2:]) == 2, proc)
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -15) and "Traceback" not in err, err[-2000:]
    ds = logged()
    first_down = next(i for i, d in enumerate(ds) if d.window.stale)
    back = next(i for i in range(first_down, len(ds)) if not ds[i].window.stale)
    assert [d.reason for d in ds[first_down:first_down + 3]] == ["guard", "guard", "fallback"]
    assert not any(d.push for d in ds[first_down:back])  # nothing pushed at a dead server
    assert ds[back].policy == want and ds[back].push and ds[back].applied  # re-pushed in the first tick back
    assert all(code(SAFE) != (p[channel.KEY_KIND], p[channel.KEY_K]) for p in server.fake.pushes)  # no fallback push


def sidecar_runs(fake: FakeSGLang) -> tuple[int, int]:
    return fake.plugin_state[channel.KEY_KIND], fake.plugin_state[channel.KEY_K]
