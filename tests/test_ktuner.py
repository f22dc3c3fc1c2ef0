"""KTuner: k arms in order, the learner behind them, the per-context estimates decisions report."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schedctl.controller.ktuner import KTuner, KTunerParams, arm_label, arm_of_policy
from schedctl.engine_adapter.base import Observation
from schedctl.policies.arms import spec_for
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, parse_policy
from schedctl.stats import LatencyDist


def obs(rate_rps: float, hit: float | None = 0.5, queue: int = 10) -> Observation:
    return Observation(start_s=0.0, end_s=10.0, arrivals=int(rate_rps * 10), completions=10,
                       ttft=LatencyDist(samples_s=[1.0] * 30), queue_len=queue, cache_hit_rate=hit)


def test_arms_map_to_policies_and_back() -> None:
    assert spec_for(1) == FCFSSpec() and spec_for("inf") == LPMSpec() and spec_for(4) == KLPMSpec(k=4)
    for k in (1, 2, 4, 8, "inf"):
        assert arm_of_policy(spec_for(k)) == k
        assert parse_policy(arm_label(k)) == spec_for(k)
    assert arm_of_policy(parse_policy("klpm:1")) == 1 and arm_of_policy(parse_policy("klpm:inf")) == "inf"


@pytest.mark.parametrize("arms", [[4], [2, 1], [1, 1, 2], ["inf", 4], [0, 2]])
def test_bad_arm_lists_are_refused(arms: list[object]) -> None:
    with pytest.raises(ValidationError):
        KTunerParams(arms=arms)  # type: ignore[arg-type]


def test_arm_spellings_are_normalised() -> None:
    assert KTunerParams(arms=[1, "2", "INF"]).arms == [1, 2, "inf"]  # type: ignore[list-item]


def test_estimates_follow_rewards_and_best_arm_prefers_the_incumbent_on_ties() -> None:
    kt = KTuner(KTunerParams(learner="ucb1", learner_params={}, estimate_weight=0.5))
    o = obs(10)
    for r in (0.2, 0.4):
        kt.update(4, r, o)
    kt.update(8, 0.3, o)
    est = kt.estimate("all", 4)
    assert est is not None and est.count == 2 and est.mean == pytest.approx(0.3)
    assert kt.estimate("all", 2) is None
    assert kt.best_arm("all", prefer=8) == 8  # 0.3 vs 0.3: the incumbent
    assert kt.best_arm("all", prefer=4) == 4
    kt.update(8, 1.0, o)  # weight max(1/n, 0.5): 0.3 -> 0.65
    assert kt.estimate("all", 8).mean == pytest.approx(0.65)  # type: ignore[union-attr]
    assert kt.best_arm("all") == 8


def test_neighbour_steps_along_the_ordered_arms() -> None:
    kt = KTuner()
    assert kt.neighbour_toward(4, "inf") == 8
    assert kt.neighbour_toward(4, 1) == 2
    assert kt.neighbour_toward(4, 1, steps=2) == 1
    assert kt.neighbour_toward(2, 4) == 4
    assert kt.neighbour_toward(16, 1) == 1  # not an arm: straight to the target


def test_contextual_learner_keeps_separate_estimates_per_load_bucket() -> None:
    kt = KTuner()  # default: contextual, buckets by rate [6, 24] and hit rate [0.6]
    low, high = obs(2.0, hit=0.3), obs(30.0, hit=0.9)
    assert kt.context_label(low) != kt.context_label(high)
    kt.update(2, 0.9, low)
    kt.update(8, 0.7, high)
    assert kt.best_arm(kt.context_label(low)) == 2
    assert kt.best_arm(kt.context_label(high)) == 8


@pytest.mark.parametrize("learner", ["contextual", "linucb", "ucb1", "discounted_thompson_beta", "exp3"])
def test_every_learner_proposes_arms_and_learns(learner: str) -> None:
    params = {} if learner != "contextual" else {"learner": "ucb1"}
    kt = KTuner(KTunerParams(learner=learner, learner_params=params, seed=3))
    for i in range(30):
        o = obs(5.0 + i)
        prop = kt.select(o)
        assert prop.arm in kt.arms and prop.kind in ("explore", "exploit")
        kt.update(prop.arm, 1.0 if prop.arm == 8 else 0.2, o)


def test_same_seed_same_proposals() -> None:
    def run(seed: int) -> list[object]:
        kt = KTuner(KTunerParams(learner="discounted_thompson_beta", learner_params={}, seed=seed))
        out = []
        for i in range(40):
            p = kt.select(obs(10))
            out.append(p.arm)
            kt.update(p.arm, (i % 7) / 7, obs(10))
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_backlog_is_the_queue_in_seconds_of_the_engines_own_service() -> None:
    from schedctl.controller.ktuner import backlog_s

    def window(queue: int, first_tokens: int, rate_rps: float) -> Observation:
        return Observation(start_s=0.0, end_s=10.0, arrivals=int(rate_rps * 10), completions=first_tokens,
                           ttft=LatencyDist(samples_s=[1.0] * first_tokens), queue_len=queue, cache_hit_rate=0.1)

    mooncake = window(queue=190, first_tokens=13, rate_rps=1.3)  # 15k-token prompts past saturation
    tree = window(queue=6, first_tokens=340, rate_rps=34.0)  # short prompts, busy but not queueing
    assert backlog_s(mooncake) == pytest.approx(190 * 10 / 13)
    assert backlog_s(tree) == pytest.approx(6 * 10 / 340)
    assert backlog_s(window(queue=5, first_tokens=0, rate_rps=1.0)) == pytest.approx(50.0)  # none admitted
    assert backlog_s(window(queue=0, first_tokens=0, rate_rps=0.0)) == 0.0
    kt = KTuner()  # the default buckets: the rate does not decide, the backlog does
    assert kt.context_label(mooncake).startswith("load1")
    assert kt.context_label(tree).startswith("load0")
