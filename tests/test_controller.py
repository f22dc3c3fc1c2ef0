"""Controller.step: learning only from evidence, explore/exploit, dwell, one step, pin, advisory, determinism."""

from __future__ import annotations

import itertools
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.controller.core import Controller, ControllerParams, unavailable
from schedctl.controller.decision import Decision
from schedctl.engine_adapter.base import Observation
from schedctl.policies.spec import PolicySpec, parse_policy
from schedctl.stats import LatencyDist

K4 = parse_policy("klpm:4")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def window(self, tail_s: float = 1.0, queue: int = 10, rate: float = 10.0, n: int = 50,
               active: PolicySpec | None = None, **kw: Any) -> Observation:
        start, self.t = self.t, self.t + 10.0
        ttfts = [0.5] * (n - max(1, n // 50)) + [tail_s] * max(1, n // 50) if n else []
        return Observation(start_s=start, end_s=self.t, arrivals=int(rate * 10), completions=n,
                           ttft=LatencyDist(samples_s=ttfts), queue_len=queue, cache_hit_rate=0.5,
                           active_policy=active, **kw)

    def stale(self, reason: str = "engine unavailable: refused") -> Observation:
        start, self.t = self.t, self.t + 10.0
        return unavailable(start, self.t, reason)


class SpyLearner:
    """Wraps a learner and records every update it is given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.updates: list[tuple[Any, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def select(self, context: Any = None) -> Any:
        return self.inner.select(context)

    def update(self, arm: Any, reward: float, context: Any = None) -> None:
        assert math.isfinite(reward) and 0.0 <= reward <= 1.0
        self.updates.append((arm, reward))
        self.inner.update(arm, reward, context)


def controller(**guard: Any) -> Controller:
    c = Controller(ControllerParams(guard=guard))
    c.ktuner.learner = SpyLearner(c.ktuner.learner)  # type: ignore[assignment]
    return c


def drive(c: Controller, o: Observation, ok: bool = True) -> Decision:
    d = c.step(o)
    if d.push:
        d = c.record_apply(d, ok, None if ok else "refused")
    return d


def test_first_tick_pushes_the_initial_policy_and_later_ticks_do_not_repeat_it() -> None:
    c, clk = controller(), Clock()
    d1 = drive(c, clk.window())
    assert d1.policy == K4 and d1.push and d1.applied and d1.tick_id == 1 and d1.decision_id == "run:1"
    d2 = drive(c, clk.window(active=K4))
    assert not d2.push and d2.reason == "guard" and "dwell" in d2.detail


def test_nan_empty_stale_and_idle_windows_never_reach_the_learner() -> None:
    c, clk = controller(min_dwell_ticks=1, settle_ticks=0), Clock()
    drive(c, clk.window(active=K4))
    spy: SpyLearner = c.ktuner.learner  # type: ignore[assignment]
    before = list(spy.updates)
    bad = [
        clk.window(n=0),  # empty
        clk.window(n=5),  # too few samples
        clk.window(tail_s=math.nan),  # NaN sample
        clk.stale(),
        clk.window(queue=0, tail_s=0.5),  # idle
    ]
    nan_window = Observation(start_s=clk.t, end_s=clk.t + 10, arrivals=10, completions=10,
                             ttft=LatencyDist(bucket_upper_s=[1.0, 2.0], bucket_counts=[math.nan, 40.0]))
    clk.t += 10
    for o in [*bad, nan_window]:
        d = drive(c, o)
        assert d.learner.reward is None and d.learner.credited is None
    assert spy.updates == before
    drive(c, clk.window(active=K4))  # a good window is credited
    assert len(spy.updates) == len(before) + 1


def test_settle_ticks_keep_the_first_window_after_a_change_from_the_learner() -> None:
    c, clk = controller(settle_ticks=1, min_dwell_ticks=4), Clock()
    fcfs = parse_policy("fcfs")
    first = drive(c, clk.window(active=fcfs))  # the engine ran FCFS; klpm:4 is pushed at the end of tick 1
    assert first.applied and first.learner.credited is None  # the first window of any policy settles
    credited = [drive(c, clk.window(active=K4)).learner.credited for _ in range(3)]
    assert credited == [None, "klpm:4", "klpm:4"]  # tick 2: the queue FCFS left; from tick 3: klpm:4's own


def test_dwell_holds_a_new_policy_for_min_dwell_ticks() -> None:
    c, clk = controller(min_dwell_ticks=3), Clock()
    decisions = [drive(c, clk.window(tail_s=8.0, queue=20)) for _ in range(40)]
    change_ticks = [d.tick_id for d in decisions if d.changed]
    assert change_ticks, "a missed SLO should make the learner move"
    for a, b in itertools.pairwise(change_ticks):
        assert b - a >= 3 or decisions[b - 1].reason in ("rollback", "fallback")


def test_at_most_one_arm_step_per_tick() -> None:
    c, clk = controller(min_dwell_ticks=1, settle_ticks=0), Clock()
    arms = list(c.ktuner.arms)
    prev = arms.index(4)
    for i in range(60):
        d = drive(c, clk.window(tail_s=2.0 + (i % 5) * 3, queue=30))
        cur = arms.index(int(d.policy_label.split(":")[1]) if ":" in d.policy_label
                         else (1 if d.policy_label == "fcfs" else "inf"))
        if d.reason in ("explore", "exploit"):
            assert abs(cur - prev) <= 1
        prev = cur


def test_pin_overrides_everything_until_unpinned() -> None:
    c, clk = controller(min_dwell_ticks=1, stale_hold_ticks=0), Clock()
    pin = parse_policy("lpm")
    c.pin(pin)
    seq = [clk.window(tail_s=30.0), clk.stale(), clk.stale(), clk.window(tail_s=0.1), clk.window(tail_s=90.0)]
    for o in seq:
        d = drive(c, o)
        assert d.policy == pin and d.reason == "pinned"
    c.unpin()
    assert drive(c, clk.window(active=pin)).reason != "pinned"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0.0, 500.0), st.integers(0, 500), st.booleans()),
                min_size=1, max_size=40),
       st.sampled_from(["fcfs", "klpm:2", "klpm:8", "lpm", "klpm:3"]))
def test_a_pinned_policy_is_never_changed(windows: list[tuple[bool, float, int, bool]], label: str) -> None:
    c, clk = controller(min_dwell_ticks=1, settle_ticks=0, stale_hold_ticks=0), Clock()
    pin = parse_policy(label)
    c.pin(pin)
    for stale, tail, queue, apply_ok in windows:
        d = drive(c, clk.stale() if stale else clk.window(tail_s=tail, queue=queue), ok=apply_ok)
        assert d.policy == pin and d.reason == "pinned"


def test_advisory_mode_decides_but_never_pushes() -> None:
    c, clk = Controller(ControllerParams(mode="advisory")), Clock()
    engine_runs = parse_policy("fcfs")
    for _ in range(30):
        d = c.step(clk.window(tail_s=10.0, queue=40, active=engine_runs))
        assert d.mode == "advisory" and not d.push and not d.applied
    c.set_mode("active")
    assert c.step(clk.window(active=engine_runs)).push  # switching to active pushes at once


def test_a_failed_apply_is_pushed_again_at_the_next_tick() -> None:
    c, clk = controller(), Clock()
    d1 = drive(c, clk.window(), ok=False)
    assert d1.push and not d1.applied and d1.apply_error == "refused"
    d2 = c.step(clk.window())
    assert d2.push and d2.policy == K4


def test_engine_reporting_another_policy_gets_ours_pushed_again() -> None:
    c, clk = controller(), Clock()
    drive(c, clk.window())
    drive(c, clk.window(active=K4))
    d = c.step(clk.window(active=parse_policy("fcfs")))  # e.g. the engine restarted with its default
    assert d.push and d.policy == K4


def test_time_that_does_not_move_forward_is_not_evidence() -> None:
    c, clk = controller(min_dwell_ticks=1, settle_ticks=0), Clock()
    drive(c, clk.window(active=K4))
    drive(c, clk.window(active=K4))
    spy: SpyLearner = c.ktuner.learner  # type: ignore[assignment]
    n = len(spy.updates)
    clk.t -= 10.0
    d = drive(c, clk.window(active=K4))  # same end time as the previous window
    assert d.learner.reward is None and len(spy.updates) == n


def test_same_observations_same_decisions() -> None:
    def run() -> list[tuple[str, str]]:
        c, clk = controller(min_dwell_ticks=2), Clock()
        out = []
        for i in range(80):
            d = drive(c, clk.window(tail_s=1.0 + (i * 7919 % 13), queue=(i * 31) % 60, rate=5 + i % 20))
            out.append((d.policy_label, d.reason))
        return out

    assert run() == run()


def test_decision_is_strict_json() -> None:
    c, clk = controller(), Clock()
    d = drive(c, clk.window(tail_s=math.inf))
    text = d.model_dump_json()
    assert "NaN" not in text and "Infinity" not in text
    assert Decision.model_validate_json(text) == d


def test_implausible_windows_are_stale_with_a_reason_and_never_reach_the_learner() -> None:
    c, clk = controller(min_dwell_ticks=1, settle_ticks=0, stale_hold_ticks=1, safe_policy="fcfs"), Clock()
    drive(c, clk.window(active=K4))
    spy: SpyLearner = c.ktuner.learner  # type: ignore[assignment]
    before = len(spy.updates)
    huge = 10**300
    bad = [
        clk.window(tail_s=1e300, active=K4),  # a latency no engine measures
        clk.window(queue=huge, active=K4),  # a queue no engine holds
        clk.window(active=K4).model_copy(update={"completions": huge}),
        clk.window(active=K4).model_copy(update={"ttft": LatencyDist(samples_s=[0.5] * 40 + [-1.0])}),
        clk.window(active=K4).model_copy(update={"oldest_wait_s": math.inf}),
    ]
    ds = [drive(c, o) for o in bad]
    assert all(d.window.stale and "implausible" in (d.window.stale_reason or "") for d in ds)
    assert all(d.learner.reward is None and d.learner.credited is None for d in ds)
    assert len(spy.updates) == before
    assert [d.reason for d in ds] == ["guard", "fallback", "fallback", "fallback", "fallback"]  # as an outage
    assert all(len(d.model_dump_json()) < 4000 for d in ds)  # no 301-digit numbers in the decision
    assert ds[-1].window.queue_len == 0
    d = drive(c, clk.window(active=parse_policy("fcfs")))
    assert not d.window.stale and d.policy == K4 and d.push  # fresh again: the learned policy, pushed at once
