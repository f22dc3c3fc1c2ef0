"""Tuner arms that mix queue-policy families: settings, step rules (steps along an axis, one step across
families), the what-if neighbours, the controller end to end, and the family in the log, review and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schedctl.bench.adaptive import TickPoint
from schedctl.bench.timeline import policy_rows, timeline_figure
from schedctl.cli.review import detail_view
from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.ktuner import KTuner, KTunerParams, arm_family, arm_label, arm_steps
from schedctl.controller.objective import ObjectiveParams
from schedctl.controller.whatif import WhatIf, WhatIfParams
from schedctl.engine_adapter.base import Observation
from schedctl.policies.arms import arm_of, check_arm, spec_for
from schedctl.policies.spec import PolicySpec, parse_policy, policy_label
from schedctl.settings import load_settings
from schedctl.stats import LatencyDist

MIXED = ["fcfs", "klpm:2", "klpm:4", "lpm", "hrrn", "lpm-aging:64"]
ARMS = [1, 2, 4, "inf", "hrrn", "lpm-aging:64"]


def test_mixed_arms_parse_to_one_arm_per_policy() -> None:
    assert KTunerParams(arms=MIXED).arms == ARMS  # type: ignore[arg-type]
    assert KTunerParams(arms=[1, "klpm:4", "INF", "HRRN", "sglang:lpm"]).arms == [1, 4, "inf", "hrrn", "sglang:lpm"]
    for arm in ARMS:
        assert arm_of(spec_for(arm)) == arm and check_arm(arm_label(arm)) == arm
    assert [arm_family(a) for a in ARMS] == ["klpm", "klpm", "klpm", "klpm", "hrrn", "lpm-aging"]


@pytest.mark.parametrize(("arms", "words"), [
    (["klpm:4", "klpm:2", "hrrn"], "klpm arms must be in increasing order of k"),
    (["lpm-aging:64", "lpm-aging:16"], "lpm-aging arms must be in increasing order of N"),
    (["fcfs", "klpm:1"], "distinct"),
    (["fcfs", "slai"], "queue policies"),
    (["fcfs", "lpm-aging:0"], "1..1000000"),
    (["fcfs", "nonsense"], "not a k"),
])
def test_bad_mixed_arms_say_why(arms: list[Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        KTunerParams(arms=arms)


def test_a_settings_file_with_mixed_arms(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text("[tuner]\narms = " + json.dumps(MIXED) + "\n")
    s = load_settings(f)
    assert s.tuner.arms == ARMS
    Controller(ControllerParams(tuner=s.tuner))  # builds


def test_steps_are_counted_along_an_axis_and_a_family_switch_is_one_step() -> None:
    kt = KTuner(KTunerParams(arms=["fcfs", "klpm:2", "klpm:4", "lpm", "hrrn", "lpm-aging:16", "lpm-aging:64",
                                   "lpm-aging:256"]))
    assert kt.neighbour_toward(4, "hrrn") == "hrrn"  # across families: one step, straight there
    assert kt.neighbour_toward("hrrn", 1) == 1  # not via lpm, the arm listed next to it
    assert kt.neighbour_toward(1, "inf") == 2  # along the k axis: one arm at a time
    assert kt.neighbour_toward("lpm-aging:16", "lpm-aging:256") == "lpm-aging:64"
    assert kt.neighbour_toward("lpm-aging:16", "lpm-aging:256", steps=2) == "lpm-aging:256"
    assert arm_steps(1, "inf", kt.arms) == 3 and arm_steps("inf", "hrrn", kt.arms) == 1
    assert arm_steps("hrrn", "hrrn", kt.arms) == 0


def test_whatif_neighbours_include_the_other_families() -> None:
    wi = WhatIf(WhatIfParams(arms="neighbours"), ObjectiveParams(), 0.25)
    assert wi.arms_to_replay(4, ARMS) == [4, 2, "inf", "hrrn", "lpm-aging:64"]
    assert wi.arms_to_replay("hrrn", ARMS) == ["hrrn", 1, 2, 4, "inf", "lpm-aging:64"]
    assert WhatIf(WhatIfParams(), ObjectiveParams(), 0.25).arms_to_replay(1, ARMS) == [
        1, 2, "hrrn", "lpm-aging:64", 4, "inf"]


class Engine:
    """A pretend engine whose window tail depends only on the running policy."""

    def __init__(self, tails: dict[str, float], start: PolicySpec) -> None:
        self.tails, self.running, self.t = tails, start, 0.0

    def window(self) -> Observation:
        start, self.t = self.t, self.t + 10.0
        tail = self.tails[policy_label(self.running)]
        return Observation(start_s=start, end_s=self.t, arrivals=100, completions=100,
                           ttft=LatencyDist(samples_s=[0.5] * 98 + [tail] * 2), queue_len=20, cache_hit_rate=0.5,
                           active_policy=self.running)


def test_the_controller_tunes_a_mixed_family_one_legal_step_at_a_time() -> None:
    tails = {"fcfs": 200.0, "klpm:2": 30.0, "klpm:4": 20.0, "lpm": 60.0, "hrrn": 3.0, "lpm-aging:64": 10.0}
    c = Controller(ControllerParams(initial_policy=parse_policy("klpm:4"), tuner=KTunerParams(arms=MIXED),
                                    guard={"min_dwell_ticks": 2, "settle_ticks": 0, "rollback_ticks": 99,
                                           "safe_policy": "fcfs"}))  # type: ignore[arg-type]
    eng = Engine(tails, parse_policy("klpm:4"))
    kt = c.ktuner
    chosen = []
    for _ in range(120):
        d = c.step(eng.window())
        if d.push:
            before = eng.running
            eng.running = d.policy
            c.record_apply(d, True)
            a, b = arm_of(before), arm_of(d.policy)  # type: ignore[arg-type]
            assert arm_steps(a, b, kt.arms) <= 1, (policy_label(before), d.policy_label)  # never two on an axis
        chosen.append(d.policy_label)
    assert "hrrn" in chosen and chosen[-20:].count("hrrn") >= 15  # it finds the best family and stays


def test_the_log_review_and_plot_show_the_family(tmp_path: Path) -> None:
    c = Controller(ControllerParams(initial_policy=parse_policy("hrrn"), tuner=KTunerParams(arms=MIXED)))
    d = c.step(Engine({"hrrn": 1.0}, parse_policy("hrrn")).window())
    assert json.loads(d.model_dump_json())["policy_family"] == "hrrn"
    assert any("hrrn [hrrn]" in line for line in detail_view(d, 200, 0.0))
    labels = ["hrrn", "klpm:4", "fcfs", "lpm-aging:64", "lpm", "sglang:lpm", "klpm:2"]
    assert policy_rows(labels) == ["fcfs", "klpm:2", "klpm:4", "lpm", "lpm-aging:64", "hrrn", "sglang:lpm"]
    points = [TickPoint(time_s=10.0 * i, policy=labels[i % len(labels)], reason="guard", arrival_rate_rps=5.0,
                        queue_len=3, ttft_p99_s=0.5, cache_hit_rate=0.5) for i in range(1, 30)]
    fig = timeline_figure(points, "mixed")
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "hrrn [hrrn]" in ticks and "klpm:4 [klpm]" in ticks and "lpm-aging:64 [lpm-aging]" in ticks
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"family klpm", "family hrrn", "family lpm-aging", "family sglang"} <= set(legend)
