"""What-if replay in the controller core: which arms, scoring, the prior, the filter, the settings (no engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.objective import ObjectiveParams
from schedctl.controller.whatif import WhatIf, WhatIfParams
from schedctl.engine_adapter.base import Counterfactual, Observation, ReplayReport
from schedctl.files import InputFileError
from schedctl.policies.spec import KValue, parse_policy
from schedctl.settings import load_settings
from schedctl.stats import LatencyDist

ARMS: list[KValue] = [1, 2, 4, 8, "inf"]
K4 = parse_policy("klpm:4")


def window(start_s: float, tail_s: float, queue: int = 10, n: int = 50, fast_s: float = 0.5) -> Observation:
    """A 10 s window: n first tokens, most at ``fast_s``, the slowest 2% at ``tail_s``; the oldest waiting
    request has waited ``tail_s`` too."""
    slow = max(1, n // 50)
    return Observation(start_s=start_s, end_s=start_s + 10.0, arrivals=n, completions=n,
                       ttft=LatencyDist(samples_s=[fast_s] * (n - slow) + [tail_s] * slow), queue_len=queue,
                       cache_hit_rate=0.5, oldest_wait_s=tail_s if queue else 0.0)


def report(start_s: float, tails: dict[KValue, float], **kw: Any) -> ReplayReport:
    return ReplayReport(start_s=start_s, end_s=start_s + 10.0, windows=1,
                        results=[Counterfactual(arm=a, observation=window(start_s, t, **kw)) for a, t in tails.items()])


def test_arms_to_replay_start_with_the_running_arm_and_go_outward() -> None:
    assert WhatIf(WhatIfParams(), ObjectiveParams(), 0.25).arms_to_replay(4, ARMS) == [4, 2, 8, 1, "inf"]
    assert WhatIf(WhatIfParams(arms="neighbours"), ObjectiveParams(), 0.25).arms_to_replay(1, ARMS) == [1, 2]
    assert WhatIf(WhatIfParams(arms=["inf", 1]), ObjectiveParams(), 0.25).arms_to_replay(4, ARMS) == [1, "inf"]


def test_scores_use_the_live_objective_and_rank_the_better_arm_first() -> None:
    wi = WhatIf(WhatIfParams(), ObjectiveParams(ttft_target_s=2.0), 0.25)
    rec = wi.score(report(0.0, {4: 20.0, 8: 3.0, 1: 60.0}))
    assert rec.evidence and rec.best == "klpm:8"
    assert rec.scores["klpm:8"].reward > rec.scores["klpm:4"].reward > rec.scores["fcfs"].reward  # type: ignore[operator]
    assert rec.scores["klpm:8"].tail_s == pytest.approx(3.0)  # the oldest waiting request counts in the tail


def test_a_replayed_set_that_is_idle_under_every_arm_or_has_too_few_samples_is_not_evidence() -> None:
    wi = WhatIf(WhatIfParams(), ObjectiveParams(ttft_target_s=2.0, min_samples=20), 0.25)
    idle = wi.score(report(0.0, {4: 0.5, 8: 0.5}, queue=0))
    assert not idle.evidence and "idle" in (idle.why_not_evidence or "") and idle.best is None
    # one arm empties the queue within the SLO, the other does not: evidence, and the idle arm scores 1
    mixed = wi.score(ReplayReport(results=[Counterfactual(arm=4, observation=window(0, 0.5, queue=0)),
                                           Counterfactual(arm=8, observation=window(0, 9.0, queue=30))]))
    assert mixed.evidence and mixed.best == "klpm:4" and mixed.scores["klpm:4"].reward == pytest.approx(1.0)
    thin = wi.score(report(0.0, {4: 5.0, 8: 9.0}, n=5))
    assert not thin.evidence and "too few" in (thin.why_not_evidence or "")
    failed = wi.score(ReplayReport(error="boom"))
    assert not failed.evidence and failed.error == "boom"


def controller(arms: list[KValue], **whatif: Any) -> Controller:
    return Controller(ControllerParams(tuner={"arms": arms}, guard={"min_dwell_ticks": 1},
                                       whatif={"enabled": True, **whatif}))


def test_prior_credits_every_replayed_arm_and_replaces_the_live_reward_of_the_running_one() -> None:
    c = controller([4, 8])
    c.record_apply(c.step(window(0.0, 1.0)), True)  # klpm:4 pushed and running
    live = window(10.0, 1.0)  # the live window looks fine ...
    d = c.step(live, report(10.0, {4: 30.0, 8: 4.0}))  # ... but its replay, comparable with 8's, does not
    assert d.whatif is not None and sorted(d.whatif.credited) == ["klpm:4", "klpm:8"]
    ctx = d.learner.context
    assert ctx is not None and d.learner.credited is None  # the live reward did not go in
    est4, est8 = c.ktuner.estimate(ctx, 4), c.ktuner.estimate(ctx, 8)
    assert est4 is not None and est8 is not None and est4.count == 1 and est8.count == 1
    assert est4.mean == pytest.approx(d.whatif.scores["klpm:4"].reward)
    assert est8.mean > est4.mean
    assert d.whatif.fidelity == pytest.approx(d.whatif.scores["klpm:4"].reward - d.learner.reward)  # type: ignore[operator]


def test_prior_without_evidence_credits_the_live_reward_as_usual() -> None:
    c = controller([4, 8])
    c.record_apply(c.step(window(0.0, 1.0)), True)
    d = c.step(window(10.0, 5.0), report(10.0, {4: 0.5, 8: 0.5}, queue=0))
    assert d.whatif is not None and not d.whatif.evidence and d.whatif.credited == []
    assert d.learner.credited == "klpm:4"


def run_missed_slo(c: Controller, replay: bool) -> list[Any]:
    c.record_apply(c.step(window(0.0, 10.0)), True)
    out = []
    for i in range(1, 4):
        rep = report(i * 10.0, {4: 10.0, 8: 90.0}) if replay else None
        d = c.step(window(i * 10.0, 10.0), rep)
        c.record_apply(d, True)
        out.append(d)
    return out


def test_filter_refuses_to_explore_an_arm_the_replay_scores_clearly_worse() -> None:
    plain = run_missed_slo(Controller(ControllerParams(tuner={"arms": [4, 8]}, guard={"min_dwell_ticks": 1})),
                           replay=False)
    assert any(d.reason == "explore" and d.policy_label == "klpm:8" for d in plain)  # it would explore klpm:8
    filtered = run_missed_slo(controller([4, 8], mode="filter"), replay=True)
    assert all(d.policy_label == "klpm:4" for d in filtered)
    vetoes = [d for d in filtered if d.whatif is not None and d.whatif.vetoed == "klpm:8"]
    assert vetoes and all(d.reason == "guard" and "what-if" in d.detail for d in vetoes)
    assert all(d.whatif is not None and d.whatif.credited == [] for d in filtered)  # filter: no prior


def test_whatif_arms_are_asked_only_when_on_unpinned_and_due() -> None:
    assert Controller().whatif_arms() == []  # off by default
    c = controller(ARMS, every_ticks=2)
    assert c.whatif_arms() == []  # the next tick (1) is not due
    c.step(window(0.0, 1.0))
    assert c.whatif_arms()[0] == 4  # tick 2: the running (initial) arm first
    c.pin(parse_policy("fcfs"))
    assert c.whatif_arms() == [] and not c.whatif_active()


def test_settings_whatif_table_loads_and_bad_values_name_the_field(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[whatif]\nenabled = true\nmode = "filter"\narms = [1, "INF"]\nhorizon_windows = 2\n')
    s = load_settings(good)
    params = s.controller_params().whatif
    assert params.enabled and params.mode == "filter" and params.arms == [1, "inf"] and params.horizon_windows == 2
    assert load_settings(None).whatif.enabled is False
    for text, field, reason in [('[whatif]\nmode = "maybe"\n', "whatif.mode", "prior"),
                                ("[whatif]\nhorizon_windows = 0\n", "whatif.horizon_windows", "greater than"),
                                ("[whatif]\narms = [3]\n", "", "whatif.arms")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(InputFileError) as err:
            load_settings(bad)
        assert str(bad) in str(err.value) and field in str(err.value) and reason in str(err.value)


def test_the_sidecar_refuses_whatif_with_sglang_naming_the_file_and_field(tmp_path: Path) -> None:
    from schedctl.cli.sidecar import run_cmd

    cfg = tmp_path / "sg.toml"
    cfg.write_text('[engine]\nadapter = "sglang"\n[whatif]\nenabled = true\n')
    with pytest.raises(InputFileError) as err:
        run_cmd(config=cfg, fast=True, ticks=1, plot=None, compare=False)
    assert str(cfg) in str(err.value) and "whatif.enabled" in str(err.value) and "token ids" in str(err.value)
