"""The load bucketer (thresholds with hysteresis) and ContextualBandit (one learner per load bucket).

Stated bound: when load alternates between a low regime (best arm k=1) and a high one (best arm "inf") every
150 steps, over 3000 steps (3 seeds) a ContextualBandit of Thompson (UCB1, exploration 0.5) learners has at most
30% (50%) of the regret of one context-blind learner of the same kind, and in the last 1000 steps plays each
regime's best arm >= 90% of the time.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from schedctl.bandits import (
    BanditConfigError,
    BucketerParams,
    ContextualBandit,
    LoadBucketer,
    LoadFeatures,
    bandit_from_state,
    make_bandit,
)

ARMS = [1, 2, 4, 8, "inf"]


def feats(rate: float, queue: float = 0.0, share: float | None = 0.2) -> LoadFeatures:
    return LoadFeatures(arrival_rate_rps=rate, queue_len=queue, prefix_share=share)


def test_levels_from_thresholds() -> None:
    params = BucketerParams(rate_thresholds_rps=[4.0, 16.0], queue_thresholds=[8.0, 64.0], share_thresholds=[0.5])
    labels = [LoadBucketer(params).observe(feats(r, q, s)) for r, q, s in [(1, 0, 0.1), (5, 0, 0.1), (20, 0, 0.9)]]
    assert labels == ["load0-share0", "load1-share0", "load2-share1"]
    # the load level is the higher of the rate level and the queue level
    assert LoadBucketer(params).observe(feats(1.0, queue=100.0)) == "load2-share0"
    assert LoadBucketer(BucketerParams(share_thresholds=[])).observe(feats(20.0)) == "load2"
    assert set(LoadBucketer(params).labels()) == {f"load{n}-share{s}" for n in range(3) for s in range(2)}


def test_hysteresis_keeps_a_hovering_load_in_its_bucket() -> None:
    bucketer = LoadBucketer(
        BucketerParams(rate_thresholds_rps=[10.0], queue_thresholds=[1000.0], hysteresis_fraction=0.1)
    )
    assert bucketer.observe(feats(9.0)) == "load0-share0"
    # hovering within ±10% of the threshold: no flapping either way
    assert {bucketer.observe(feats(r)) for r in [10.0, 10.5, 9.5, 10.9]} == {"load0-share0"}
    assert bucketer.observe(feats(11.0)) == "load1-share0"  # crossed 10 * 1.1
    assert {bucketer.observe(feats(r)) for r in [9.5, 9.1, 10.5]} == {"load1-share0"}
    assert bucketer.observe(feats(8.9)) == "load0-share0"  # crossed 10 * 0.9


def test_without_hysteresis_the_same_sequence_flaps() -> None:
    bucketer = LoadBucketer(
        BucketerParams(rate_thresholds_rps=[10.0], queue_thresholds=[1000.0], hysteresis_fraction=0.0)
    )
    assert len({bucketer.observe(feats(r)) for r in [9.0, 10.5, 9.5, 10.9]}) == 2


def test_peek_does_not_move_and_observe_is_idempotent() -> None:
    bucketer = LoadBucketer(BucketerParams(rate_thresholds_rps=[10.0], queue_thresholds=[1000.0]))
    bucketer.observe(feats(5.0))
    assert bucketer.peek(feats(50.0)) == "load1-share0"
    assert bucketer.current == "load0-share0"
    label = bucketer.observe(feats(10.5))
    assert bucketer.observe(feats(10.5)) == label == bucketer.peek(feats(10.5))


def test_missing_share_keeps_the_last_share_level() -> None:
    bucketer = LoadBucketer()
    assert bucketer.observe(feats(1.0, share=0.9)) == "load0-share1"
    assert bucketer.observe(feats(1.0, share=None)) == "load0-share1"


def test_state_round_trip_keeps_the_hysteresis_memory() -> None:
    params = BucketerParams(rate_thresholds_rps=[10.0], queue_thresholds=[1000.0], hysteresis_fraction=0.2)
    bucketer = LoadBucketer(params)
    bucketer.observe(feats(13.0))  # level 1
    restored = LoadBucketer.from_state(json.loads(json.dumps(bucketer.state())))
    hovering = feats(9.0)  # below 10 but above 10 * 0.8: stays at level 1 only with the memory
    assert restored.observe(hovering) == bucketer.observe(hovering) == "load1-share0"
    assert LoadBucketer(params).observe(hovering) == "load0-share0"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rate_thresholds_rps": [16.0, 4.0]}, "bucketer.rate_thresholds_rps"),
        ({"queue_thresholds": [-1.0, 8.0]}, "bucketer.queue_thresholds"),
        ({"rate_thresholds_rps": [4.0]}, "bucketer"),
        ({"hysteresis_fraction": 1.0}, "bucketer.hysteresis_fraction"),
        ({"rate_limit": 3}, "bucketer.rate_limit"),
    ],
)
def test_bad_bucketer_params_refused(fields: dict, field: str) -> None:
    with pytest.raises(BanditConfigError) as err:
        ContextualBandit(ARMS, 0, {"bucketer": fields})
    assert err.value.field == field
    with pytest.raises(BanditConfigError):
        LoadBucketer(fields)


def regime_run(learner, seed: int, horizon: int = 3000, blind: bool = False):
    """Load flips between 2 rps and 30 rps every 150 steps; arm 1 is best at low load, "inf" at high load."""
    rng = np.random.default_rng(seed)
    low = dict(zip(ARMS, [0.8, 0.6, 0.5, 0.4, 0.3], strict=True))
    high = dict(zip(ARMS, [0.3, 0.4, 0.5, 0.6, 0.8], strict=True))
    regret, late_hits = 0.0, []
    for t in range(horizon):
        is_high = (t // 150) % 2 == 1
        means = high if is_high else low
        context = None if blind else feats(30.0 if is_high else 2.0, queue=float(rng.integers(0, 5)))
        arm = learner.select(context)
        learner.update(arm, float(rng.random() < means[arm]), context)
        regret += 0.8 - means[arm]
        if t >= horizon - 1000:
            late_hits.append(arm == ("inf" if is_high else 1))
    return regret, float(np.mean(late_hits))


@pytest.mark.parametrize(
    ("learner", "params", "max_ratio"), [("thompson_beta", {}, 0.3), ("ucb1", {"exploration": 0.5}, 0.5)]
)
def test_one_learner_per_load_bucket_beats_a_context_blind_learner(
    learner: str, params: dict, max_ratio: float
) -> None:
    ctx = [
        regime_run(ContextualBandit(ARMS, s, {"learner": learner, "learner_params": params}), 10 + s) for s in range(3)
    ]
    blind = [regime_run(make_bandit(learner, ARMS, s, **params), 10 + s, blind=True) for s in range(3)]
    assert np.mean([r for r, _ in ctx]) <= max_ratio * np.mean([r for r, _ in blind])
    assert all(hits >= 0.9 for _, hits in ctx)


def test_update_credits_the_right_bucket() -> None:
    bandit = ContextualBandit(ARMS, 0)
    with pytest.raises(ValueError, match="load features"):
        bandit.update(1, 1.0)
    arm = bandit.select(feats(2.0))
    bandit.update(arm, 1.0)  # no context: the bucket of the last select
    assert bandit.learners["load0-share0"].state()["steps"] == 1
    bandit.update(arm, 1.0, feats(30.0))  # the window's own features: that bucket, without moving the bucketer
    assert bandit.learners["load2-share0"].state()["steps"] == 1
    assert bandit.bucketer.current == "load0-share0"


def test_arms_follow_into_every_bucket_and_state_round_trips() -> None:
    bandit = ContextualBandit(ARMS, 4, {"learner": "discounted_thompson_beta"})
    for rate in [1.0, 8.0, 30.0] * 20:
        bandit.update(bandit.select(feats(rate)), 0.5)
    bandit.add_arm(16)
    bandit.remove_arm(2)
    assert all(learner.arms == (1, 4, 8, "inf", 16) for learner in bandit.learners.values())
    assert bandit.learner("load1-share1").arms == (1, 4, 8, "inf", 16)  # a bucket first seen now
    restored = bandit_from_state(json.loads(json.dumps(bandit.state())))
    for rate in [30.0, 1.0, 8.0, 100.0]:
        a, b = bandit.select(feats(rate)), restored.select(feats(rate))
        assert a == b
        bandit.update(a, 0.3)
        restored.update(b, 0.3)
    assert restored.state() == bandit.state()


def backlog_feats(backlog_s: float | None, rate: float = 1.0) -> LoadFeatures:
    return LoadFeatures(arrival_rate_rps=rate, queue_len=0.0, backlog_s=backlog_s, prefix_share=0.2)


def test_backlog_levels_alone_whatever_the_rate() -> None:
    params = BucketerParams(rate_thresholds_rps=[], queue_thresholds=[], backlog_thresholds_s=[1.0, 10.0])
    bucketer = LoadBucketer(params)
    # 1.3 req/s with 150 s of backlog is overload; 34 req/s with 0.2 s of it is not: the rate says nothing
    assert bucketer.observe(backlog_feats(150.0, rate=1.3)) == "load2-share0"
    assert LoadBucketer(params).observe(backlog_feats(0.2, rate=34.0)) == "load0-share0"
    assert LoadBucketer(params).observe(backlog_feats(3.0)) == "load1-share0"
    assert bucketer.observe(backlog_feats(None)) == "load2-share0"  # not measured: the last level holds
    assert set(LoadBucketer(params).labels()) == {f"load{n}-share{s}" for n in range(3) for s in range(2)}
    assert LoadBucketer(params).current is None  # nothing observed yet


def test_the_load_level_is_the_highest_of_the_given_features() -> None:
    params = BucketerParams(rate_thresholds_rps=[10.0], queue_thresholds=[], backlog_thresholds_s=[5.0])
    assert LoadBucketer(params).observe(backlog_feats(20.0, rate=1.0)) == "load1-share0"
    assert LoadBucketer(params).observe(backlog_feats(0.0, rate=20.0)) == "load1-share0"
    assert LoadBucketer(params).observe(backlog_feats(0.0, rate=1.0)) == "load0-share0"


@pytest.mark.parametrize(
    "fields",
    [
        {"rate_thresholds_rps": [], "queue_thresholds": [], "backlog_thresholds_s": []},  # no load feature at all
        {"rate_thresholds_rps": [4.0, 16.0], "queue_thresholds": [8.0, 64.0], "backlog_thresholds_s": [1.0]},
        {"backlog_thresholds_s": [10.0, 1.0]},
    ],
)
def test_bad_backlog_thresholds_refused(fields: dict) -> None:
    with pytest.raises(BanditConfigError):
        LoadBucketer(fields)


def test_a_state_saved_before_the_backlog_feature_restores() -> None:
    old = {"params": {"rate_thresholds_rps": [10.0], "queue_thresholds": [1000.0], "share_thresholds": [0.5],
                      "hysteresis_fraction": 0.2},
           "levels": {"rate": 1, "queue": 0, "share": 0}}
    restored = LoadBucketer.from_state(old)
    assert restored.current == "load1-share0"
    assert restored.observe(feats(9.0)) == "load1-share0"  # the hysteresis memory came back
