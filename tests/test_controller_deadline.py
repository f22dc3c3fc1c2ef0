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


def test_end_to_end_on_the_embedded_engine_the_engine_runs_the_tuned_theta() -> None:
    from schedctl.controller.service import Service
    from schedctl.engine_adapter.sim import SimAdapter
    from schedctl.sim.profiles import load_gpu, load_model
    from schedctl.sim.run import Hardware, new_engine
    from schedctl.workloads.registry import make_requests

    hw = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))

    def run(target_s: float) -> list[float]:
        ad = SimAdapter(new_engine(hw, SLAI), make_requests("sharegpt", 40.0, duration_s=60, seed=0), 10.0)
        c = Controller(ControllerParams(initial_policy=SLAI, guard={"safe_policy": "slai"},  # type: ignore[arg-type]
                                        deadline=DeadlineParams(tuner=DeadlineTunerParams(tbt_p99_target_s=target_s))))
        svc = Service(c, ad, clock=lambda: ad.now_s)
        thetas = []
        for _ in range(5):
            d = svc.tick()
            assert d.applied or not d.push
            assert ad.engine.policy == d.policy  # what the controller decided is what the engine runs
            thetas.append(d.policy.theta_low)
        return thetas

    tight, loose = run(0.001), run(10.0)
    assert tight[-1] > SLAI.theta_low and loose[-1] < SLAI.theta_low


def test_the_sidecar_refuses_deadline_tuning_on_sglang_naming_the_file_and_field(tmp_path: Any) -> None:
    from schedctl.cli.sidecar import run_cmd
    from schedctl.files import InputFileError

    cfg = tmp_path / "sg.toml"
    from pathlib import Path

    text = (Path(__file__).parents[1] / "config" / "sidecar.slai.toml").read_text()
    cfg.write_text(text.replace('adapter = "sim"', 'adapter = "sglang"'))
    with pytest.raises(InputFileError) as err:
        run_cmd(config=cfg, fast=True, ticks=1, plot=None, compare=False)
    assert str(cfg) in str(err.value) and "deadline" in str(err.value) and "prefill order" in str(err.value)
