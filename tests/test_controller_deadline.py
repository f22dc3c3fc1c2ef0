"""Deadline mode: with an SLAI initial policy the DeadlineTuner moves Θ (or the TBT slack) to hold P99 TBT."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from schedctl.controller.core import Controller, ControllerParams, DeadlineParams
from schedctl.controller.deadline import DeadlineTunerParams
from schedctl.engine_adapter.base import Observation
from schedctl.policies.spec import PolicySpec, parse_policy
from schedctl.stats import LatencyDist

try:
    SLAI = parse_policy("slai")
except ValueError:  # the SLAI PolicySpec has not landed
    pytest.skip("no slai PolicySpec in this checkout", allow_module_level=True)


def params(knob: str = "theta", **kw: Any) -> ControllerParams:
    kw.setdefault("max_change_per_tick", 1.0)
    tuner = DeadlineTunerParams(tbt_p99_target_s=0.1, knob_initial=5.0, knob_min=0.0, knob_max=20.0, **kw)
    return ControllerParams(initial_policy=SLAI, guard={"safe_policy": "slai"},
                            deadline=DeadlineParams(knob=knob, tuner=tuner))  # type: ignore[arg-type]


def window(t: float, p99_tbt_s: float, active: PolicySpec) -> Observation:
    tbt = LatencyDist(samples_s=[p99_tbt_s * 0.5] * 98 + [p99_tbt_s] * 2)
    return Observation(start_s=t - 10, end_s=t, arrivals=50, completions=50,
                       ttft=LatencyDist(samples_s=[0.5] * 50), tbt=tbt, queue_len=5, active_policy=active)


def run(c: Controller, tbts: list[float]) -> list[Any]:
    active: PolicySpec = SLAI
    out = []
    for i, tbt in enumerate(tbts):
        d = c.step(window(10.0 * (i + 1), tbt, active))
        if d.push:
            d = c.record_apply(d, True)
            active = d.policy
        out.append(d)
    return out


def test_tbt_above_target_raises_theta_and_headroom_lowers_it() -> None:
    up = run(Controller(params()), [0.3] * 6)
    thetas = [d.policy.theta_low for d in up]
    assert thetas[-1] > thetas[0] and all(b - a <= 1.0 + 1e-9 for a, b in itertools.pairwise(thetas))
    assert all(d.policy.theta_high - d.policy.theta_low == pytest.approx(SLAI.theta_high - SLAI.theta_low)
               for d in up)
    assert all(d.deadline is not None and d.deadline["knob"] == "theta" for d in up)
    down = run(Controller(params()), [0.01] * 6)
    assert down[-1].policy.theta_low < SLAI.theta_low


def test_tbt_slack_knob_starts_from_the_policy_and_moves_within_its_rate_limit() -> None:
    up = run(Controller(params(knob="tbt_slack_s", max_change_per_tick=0.01)), [0.3] * 4)
    slacks = [d.policy.tbt_slack_s for d in up]
    assert slacks[0] <= SLAI.tbt_slack_s + 0.01 + 1e-12  # from the spec's 0.0, not from knob_initial
    assert slacks[-1] > slacks[0]


def test_deadline_mode_never_proposes_a_queue_policy_and_refuses_a_k_pin() -> None:
    c = Controller(params())
    assert all(d.policy.kind == "slai" for d in run(c, [0.3, 0.01, 0.2, 0.05] * 5))
    with pytest.raises(ValueError, match="family"):
        c.pin(parse_policy("lpm"))


def test_slai_needs_deadline_settings() -> None:
    with pytest.raises(ValueError, match="deadline"):
        ControllerParams(initial_policy=SLAI, guard={"safe_policy": "slai"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="family"):
        ControllerParams(initial_policy=SLAI, deadline=params().deadline)  # safe policy klpm:4: wrong family
