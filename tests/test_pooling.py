"""Thin windows (fewer first tokens than min_samples) of one policy pooled into evidence (controller/pooling.py)."""

from __future__ import annotations

from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.pooling import WindowPool, merge_dists
from schedctl.engine_adapter.base import Observation
from schedctl.policies.spec import parse_policy
from schedctl.stats import LatencyDist

K4, FCFS = parse_policy("klpm:4"), parse_policy("fcfs")


def thin(start_s: float, ttfts: list[float], queue: int = 30, oldest_s: float = 0.0) -> Observation:
    return Observation(start_s=start_s, end_s=start_s + 10.0, arrivals=len(ttfts), completions=len(ttfts),
                       ttft=LatencyDist(samples_s=ttfts), queue_len=queue, oldest_wait_s=oldest_s,
                       cache_hit_rate=0.1, active_policy=K4)


def test_thin_windows_of_one_policy_merge_once_they_hold_min_samples() -> None:
    pool = WindowPool(min_samples=20, max_windows=6)
    assert pool.add(thin(0, [1.0] * 8), K4) is None
    assert pool.add(thin(10, [2.0] * 8), K4) is None
    merged = pool.add(thin(20, [40.0] * 8, queue=190, oldest_s=60.0), K4)
    assert merged is not None and pool.merged_windows == 3 and not pool.windows
    assert (merged.start_s, merged.end_s, merged.ttft.count, merged.arrivals) == (0, 30, 24, 24)
    assert (merged.queue_len, merged.oldest_wait_s) == (190, 60.0)  # the state at the end


def test_a_change_of_policy_starts_the_pool_again() -> None:
    pool = WindowPool(min_samples=20, max_windows=6)
    pool.add(thin(0, [1.0] * 15), FCFS)
    assert pool.add(thin(10, [1.0] * 15), K4) is None  # FCFS's 15 are not klpm:4's evidence
    assert pool.add(thin(20, [1.0] * 5), K4) is not None


def test_the_pool_keeps_only_the_newest_windows() -> None:
    pool = WindowPool(min_samples=20, max_windows=2)
    for i in range(5):
        assert pool.add(thin(10 * i, [1.0] * 6), K4) is None  # never more than 12 in two windows
    assert WindowPool(min_samples=20, max_windows=1).add(thin(0, [1.0] * 19), K4) is None  # 1: no pooling


def test_histograms_merge_bucket_by_bucket_and_other_kinds_do_not() -> None:
    a = LatencyDist(bucket_upper_s=[1.0, 10.0], bucket_counts=[3.0, 1.0])
    b = LatencyDist(bucket_upper_s=[1.0, 10.0], bucket_counts=[2.0, 4.0])
    assert merge_dists(a, b) == LatencyDist(bucket_upper_s=[1.0, 10.0], bucket_counts=[5.0, 5.0])
    assert merge_dists(a, LatencyDist(bucket_upper_s=[2.0, 10.0], bucket_counts=[1.0, 1.0])) is None
    assert merge_dists(a, LatencyDist(samples_s=[1.0])) is None
    assert merge_dists(LatencyDist(), b) == b


def test_a_low_rate_engine_earns_rewards_from_pooled_windows() -> None:
    # 1.3 req/s of long prompts: 8 first tokens per 10 s window, never 20 on its own. Each window alone is no
    # evidence; pooled, every third window carries a reward, and a starving queue's reward is low.
    def run(pool_max_windows: int) -> list[float]:
        c = Controller(ControllerParams(objective={"pool_max_windows": pool_max_windows}))
        rewards = []
        for i in range(12):
            d = c.step(thin(10.0 * i, [30.0] * 8, queue=150, oldest_s=90.0))
            if d.push:
                d = c.record_apply(d, True)
            if d.learner.reward is not None:
                rewards.append(d.learner.reward)
                assert d.learner.pooled_windows == 3 and d.learner.credited == "klpm:4"
        return rewards

    pooled = run(6)
    assert len(pooled) == 4 and all(r < 0.3 for r in pooled)  # the engine reports klpm:4 from the first window
    assert run(1) == []
