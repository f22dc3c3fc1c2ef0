"""The guard: hold then fall back on stale data, restore the learned policy, roll back a regression, stay local."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from schedctl.controller.core import Controller, ControllerParams, unavailable
from schedctl.controller.decision import Decision
from schedctl.controller.guard import Guard, GuardParams
from schedctl.engine_adapter.base import Observation
from schedctl.policies.arms import spec_for
from schedctl.policies.spec import PolicySpec, parse_policy
from schedctl.stats import LatencyDist

K2, K4, K8 = parse_policy("klpm:2"), parse_policy("klpm:4"), parse_policy("klpm:8")
FCFS = parse_policy("fcfs")


class Engine:
    """A pretend engine: runs whatever was last applied; the tail of a window is a function of the policy."""

    def __init__(self, tail_of: Any, start: PolicySpec = K4) -> None:
        self.tail_of, self.running, self.t = tail_of, start, 0.0
        self.rate_rps = 10.0

    def window(self, queue: int = 20) -> Observation:
        start, self.t = self.t, self.t + 10.0
        tail = self.tail_of(self.running, self.t)
        return Observation(start_s=start, end_s=self.t, arrivals=int(self.rate_rps * 10), completions=100,
                           ttft=LatencyDist(samples_s=[0.5] * 98 + [tail] * 2), queue_len=queue,
                           cache_hit_rate=0.5, active_policy=self.running)

    def stale(self) -> Observation:
        start, self.t = self.t, self.t + 10.0
        return Observation(start_s=start, end_s=self.t, arrivals=0, completions=0, stale=True,
                           stale_reason="metrics scrape failed")

    def tick(self, c: Controller, o: Observation, reachable: bool = True) -> Any:
        d = c.step(o)
        if d.push:
            if reachable:
                self.running = d.policy
            d = c.record_apply(d, reachable, None if reachable else "EngineUnavailable")
        return d


def make(**guard: Any) -> Controller:
    guard.setdefault("safe_policy", "klpm:8")
    return Controller(ControllerParams(guard=guard))


def test_stale_windows_hold_then_fall_back_then_restore_the_learned_policy_within_one_tick() -> None:
    c = make(stale_hold_ticks=2, safe_policy="fcfs")
    eng = Engine(lambda p, t: 3.0)
    for _ in range(6):
        eng.tick(c, eng.window())
    learned = c.target
    assert learned != FCFS  # (the test needs a learned policy that differs from the safe one)
    reasons = []
    for _ in range(5):
        d = eng.tick(c, eng.stale())
        reasons.append(d.reason)
        if d.reason == "guard":
            assert d.policy == learned and "stale" in d.detail
        else:
            assert d.policy == FCFS
    assert reasons == ["guard", "guard", "fallback", "fallback", "fallback"]
    assert eng.running == FCFS
    d = eng.tick(c, eng.window())
    assert d.policy == learned and d.reason == "guard" and "restored" in d.detail
    assert d.push and d.applied and eng.running == learned


def test_an_unreachable_engine_gets_the_learned_policy_as_soon_as_it_answers() -> None:
    c = make(stale_hold_ticks=1, safe_policy="fcfs")
    eng = Engine(lambda p, t: 3.0)
    for _ in range(6):
        eng.tick(c, eng.window())
    learned = c.target
    outage = [eng.tick(c, unavailable(eng.t, eng.t + 10.0, "engine unavailable: refused")) for _ in range(4)]
    eng.t += 40.0
    assert [d.reason for d in outage] == ["guard", "fallback", "fallback", "fallback"]
    assert not any(d.push for d in outage)  # a push to an engine that does not answer would not land: deferred
    assert all("deferred" in (d.reconcile or "") for d in outage[1:])
    assert eng.running == learned  # never reached
    d = eng.tick(c, eng.window())  # back, still running the learned policy: nothing to push
    assert d.policy == learned and not d.push and eng.running == learned
    eng.tick(c, unavailable(eng.t, eng.t + 10.0, "engine unavailable: refused"))
    eng.t += 10.0
    eng.running = FCFS  # back after a restart, on its own order
    d = eng.tick(c, eng.window())
    assert d.policy == learned and d.push and d.applied and eng.running == learned
    assert "engine runs fcfs" in (d.reconcile or "")


def test_rollback_when_the_tail_regresses_for_m_windows_and_no_exploration_of_it_for_a_while() -> None:
    g = Guard(GuardParams(rollback_margin_fraction=0.5, rollback_ticks=2, min_dwell_ticks=3,
                          rollback_cooldown_ticks=10))
    g.last_good = K4
    g.set_running(K4, 0)
    for t in range(1, 5):
        g.record_tail(t, 2.0, "ctx")
    assert g.baseline_tail_s == 2.0
    g.set_running(K8, 4)
    g.record_tail(5, 2.5, "ctx")  # within 50%
    assert not g.rollback_due()
    g.record_tail(6, 3.5, "ctx")
    assert not g.rollback_due()  # one regressed window
    g.record_tail(7, 3.6, "ctx")
    assert g.rollback_due()
    g.block(K8, 7)
    assert g.is_blocked(K8, 8) and not g.is_blocked(K8, 17)


def test_a_baseline_from_another_load_context_never_triggers_a_rollback() -> None:
    g = Guard(GuardParams(rollback_ticks=1))
    g.last_good = K4
    g.set_running(K4, 0)
    g.record_tail(1, 1.0, "low")
    g.set_running(K8, 1)
    g.record_tail(2, 30.0, "high")  # the load rose: a new context, K8 is its reference
    assert not g.rollback_due() and g.last_good == K8


def test_a_baseline_of_one_window_in_a_new_context_is_not_yet_a_reference() -> None:
    # The window that shows the new load may have straddled the change: an exploration right after it is judged
    # only against a baseline of baseline_min_windows windows (measured: scenarios switching workloads under load).
    def explore_after(baseline_windows: int) -> bool:
        g = Guard(GuardParams(rollback_ticks=2, baseline_min_windows=2))
        g.set_running(K4, 0)
        g.record_tail(1, 1.0, "low")
        for t in range(2, 2 + baseline_windows):
            g.record_tail(t, 4.0, "high")  # the load rose under K4
        g.set_running(K8, 1 + baseline_windows)
        for t in range(2 + baseline_windows, 4 + baseline_windows):
            g.record_tail(t, 9.0, "high")  # the backlog keeps growing
        return g.rollback_due()

    assert not explore_after(1)
    assert explore_after(2)


def test_controller_rolls_back_a_regressing_policy() -> None:
    c = make(min_dwell_ticks=3, rollback_ticks=2, rollback_margin_fraction=0.5, explore_when_slo_met=True)
    tails = {"klpm:4": 3.0}
    eng = Engine(lambda p, t: tails.get(p.kind if p.kind != "klpm" else f"klpm:{p.k}", 30.0))
    decisions = [eng.tick(c, eng.window()) for _ in range(40)]
    rollbacks = [d for d in decisions if d.reason == "rollback"]
    assert rollbacks and all(d.policy == K4 for d in rollbacks)
    # after a regressed policy was tried, the engine is back on klpm:4 for most of the run
    assert sum(d.policy == K4 for d in decisions) > len(decisions) / 2


def test_local_exploration_never_jumps_past_a_worse_neighbour_of_the_leader() -> None:
    # reward is unimodal in k with its peak at 4; FCFS and LPM are terrible
    tails = {1: 200.0, 2: 20.0, 4: 4.0, 8: 20.0, "inf": 200.0}
    c = make(min_dwell_ticks=2, settle_ticks=0, rollback_ticks=99)
    eng = Engine(lambda p, t: tails[spec_k(p)])
    seen = {spec_k(eng.tick(c, eng.window()).policy) for _ in range(80)}
    assert seen <= {2, 4, 8}


def spec_k(p: PolicySpec) -> Any:
    from schedctl.controller.ktuner import arm_of_policy

    return arm_of_policy(p)


def test_no_exploration_while_the_slo_is_met_unless_asked() -> None:
    eng = Engine(lambda p, t: 1.0)  # tail 1 s, target 2 s: met
    c = make(min_dwell_ticks=1, settle_ticks=0)
    assert all(eng.tick(c, eng.window()).policy == K4 for _ in range(30))
    eng2 = Engine(lambda p, t: 1.0)
    c2 = make(min_dwell_ticks=1, settle_ticks=0, explore_when_slo_met=True)
    assert {eng2.tick(c2, eng2.window()).policy_label for _ in range(30)} != {"klpm:4"}


def test_hysteresis_keeps_near_equal_arms_from_flapping() -> None:
    # klpm:4 and klpm:8 are equally good, but whichever runs drifts a little worse the longer it runs (a backlog
    # building): the other arm's older estimate soon looks better, and without hysteresis the controller flaps
    def drifting() -> Any:
        state = {"arm": None, "windows": 0}

        def tail(p: PolicySpec, t: float) -> float:
            k = spec_k(p)
            state["windows"] = state["windows"] + 1 if state["arm"] == k else 0
            state["arm"] = k
            return (10.0 if k in (4, 8) else 300.0) * (1.0 + 0.04 * state["windows"])

        return tail

    def changes(hysteresis: float) -> int:
        eng = Engine(drifting())
        c = make(min_dwell_ticks=2, settle_ticks=0, hysteresis_reward=hysteresis, rollback_ticks=99)
        return sum(eng.tick(c, eng.window()).changed for _ in range(120))

    assert changes(0.1) < changes(0.0) / 2


def test_a_move_back_to_the_best_known_arm_is_not_rolled_back_when_the_load_rises() -> None:
    # klpm:2 is explored, is a little worse (not a regression) and so becomes the reference; the controller goes
    # back to klpm:4; then the load rises and every tail grows: that must not send it back to klpm:2
    base = {2: 5.0, 4: 4.0}

    def tail(p: PolicySpec, t: float) -> float:
        return base[spec_k(p)] * (1.0 if t <= 150 else 2.0 ** ((t - 150) / 10))

    eng = Engine(tail)
    c = Controller(ControllerParams(tuner={"arms": [2, 4]}, guard={  # type: ignore[arg-type]
        "min_dwell_ticks": 2, "settle_ticks": 0, "rollback_ticks": 2, "rollback_margin_fraction": 0.5,
        "safe_policy": "klpm:4"}))
    decisions = [eng.tick(c, eng.window()) for _ in range(40)]
    assert any(d.policy == K2 for d in decisions[:10])  # it did explore klpm:2
    assert decisions[-1].policy == K4
    assert not [d for d in decisions if d.reason == "rollback"]


def test_a_new_load_context_starts_from_the_initial_policy() -> None:
    # at light load klpm:2 is best and the controller goes there; at heavy load FCFS is terrible. Entering the
    # heavy context, the controller heads back to the initial policy first instead of exploring around klpm:2.
    def tail(p: PolicySpec, t: float) -> float:
        k = spec_k(p)
        if t <= 300:
            return {1: 4.0, 2: 3.0, 4: 5.0, 8: 7.0, "inf": 9.0}[k]
        return {1: 400.0}.get(k, 8.0)

    for light, heavy in two_load_contexts(tail, range(6), (3.0, 5), (30.0, 2000)):  # 0.5 s, then 200 s of backlog
        assert light[-1].policy == K2
        assert all(spec_k(d.policy) != 1 for d in heavy)
        assert any(d.policy == K4 for d in heavy[:4])


def two_load_contexts(tail: Callable[[PolicySpec, float], float], seeds: Iterable[int], first: tuple[float, int],
                      second: tuple[float, int]) -> Iterator[tuple[list[Decision], list[Decision]]]:
    """Per seed, 30 ticks at the first (rate req/s, queue) and then 12 at the second: both lists of decisions."""
    for seed in seeds:
        eng = Engine(tail)
        c = Controller(ControllerParams(tuner={"seed": seed}, guard={  # type: ignore[arg-type]
            "min_dwell_ticks": 2, "settle_ticks": 0, "rollback_ticks": 99}))
        eng.rate_rps = first[0]
        before = [eng.tick(c, eng.window(queue=first[1])) for _ in range(30)]
        eng.rate_rps = second[0]
        yield before, [eng.tick(c, eng.window(queue=second[1])) for _ in range(12)]


@pytest.mark.parametrize("k", [1, 2, 8, "inf"])
def test_safe_policy_must_be_of_the_tuned_family(k: Any) -> None:
    ControllerParams(guard=GuardParams(safe_policy=spec_for(k)))  # any k-LPM safe policy is fine


def test_the_decision_names_the_rule_that_acted() -> None:
    c = make(stale_hold_ticks=1, safe_policy="fcfs", min_dwell_ticks=4)
    eng = Engine(lambda p, t: 3.0)
    rules = [eng.tick(c, eng.window()).rule for _ in range(3)]
    assert rules[1:] == ["dwell", "dwell"]
    assert [eng.tick(c, eng.stale()).rule for _ in range(2)] == ["stale", "stale"]
    assert eng.tick(c, eng.window()).rule == "restore"
    c.pin(K2)
    d = eng.tick(c, eng.window())
    assert (d.rule, d.reason, d.policy) == ("pin", "pinned", K2)


def test_asking_whether_a_policy_is_blocked_changes_nothing() -> None:
    g = Guard(GuardParams(rollback_cooldown_ticks=5))
    g.block(K8, 10)
    assert g.is_blocked(K8, 12) and not g.is_blocked(K8, 15) and not g.is_blocked(K8, 16)
    assert g.blocked == {"klpm:8": 15}  # asked past the end: still there until the tick expires it
    g.expire(15)
    assert g.blocked == {}


def test_an_arm_learned_without_backlog_is_not_exploited_through_an_overload() -> None:
    # Mooncake-like: the request rate never changes (1.3 req/s of long prompts). FCFS is best while nothing
    # queues and very bad once a backlog builds. The backlog is a new load context: the controller leaves FCFS
    # for the initial policy there instead of exploiting what FCFS earned in the quiet spell.
    def tail(p: PolicySpec, t: float) -> float:
        k = spec_k(p)
        if t <= 300:
            return {1: 3.0, 2: 3.5, 4: 5.0, 8: 7.0, "inf": 9.0}[k]
        return {1: 400.0}.get(k, 20.0)

    for quiet, overload in two_load_contexts(tail, range(4), (1.3, 2), (1.3, 190)):  # 0.2 s, then 19 s of backlog
        assert quiet[-1].policy == FCFS
        assert overload[0].learner.context != quiet[-1].learner.context
        assert sum(spec_k(d.policy) == 1 for d in overload) <= 1  # at most the tick that saw the backlog first
        assert any(d.policy == K4 for d in overload[:4])
