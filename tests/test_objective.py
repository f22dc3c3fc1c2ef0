"""The objective: a window becomes a reward in [0, 1], or no reward when it is not evidence."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schedctl.controller.objective import ObjectiveParams, evaluate, tail_score
from schedctl.engine_adapter.base import Observation
from schedctl.stats import LatencyDist

P = ObjectiveParams(ttft_target_s=2.0, min_samples=20)


def window(ttfts: list[float], queue: int = 5, start: float = 0.0, end: float = 10.0, **kw: object) -> Observation:
    return Observation(start_s=start, end_s=end, arrivals=len(ttfts), completions=len(ttfts),
                       ttft=LatencyDist(samples_s=ttfts), queue_len=queue, **kw)  # type: ignore[arg-type]


def test_lower_tail_gives_higher_reward() -> None:
    rewards = [evaluate(window([0.5] * 95 + [tail] * 5), P).reward for tail in (1.0, 3.0, 10.0, 50.0, 500.0)]
    assert all(r is not None for r in rewards)
    assert rewards == sorted(rewards, reverse=True)  # type: ignore[type-var]
    assert rewards[0] == pytest.approx(1.0)
    assert rewards[-1] == pytest.approx(P.attainment_weight * 0.95)  # tail score 0 past tail_ratio_zero


def test_tail_score_is_log_scaled() -> None:
    assert tail_score(2.0, P) == 1.0
    assert tail_score(20.0, P) == pytest.approx(0.5)
    assert tail_score(200.0, P) == pytest.approx(0.0)
    assert tail_score(2000.0, P) == 0.0


def test_oldest_waiting_request_counts_as_tail() -> None:
    served_fast = [0.5] * 50
    starving = evaluate(window(served_fast, oldest_wait_s=60.0), P)
    fine = evaluate(window(served_fast, oldest_wait_s=0.1), P)
    assert starving.tail_s == 60.0 and starving.reward is not None and fine.reward is not None
    assert starving.reward < fine.reward


@pytest.mark.parametrize(
    ("obs", "why"),
    [
        (window([1.0] * 19), "too few samples"),
        (window([], queue=3), "too few samples"),
        (window([1.0] * 50, stale=True, stale_reason="scrape failed"), "stale"),
        (window([1.0] * 50, start=5.0, end=5.0), "empty window"),
        (window([1.0] * 50, start=math.nan, end=10.0), "empty window"),
        (window([1.0] * 49 + [math.nan]), "non-finite"),
        (window([1.0] * 49 + [-1.0]), "negative"),
        (Observation(start_s=0, end_s=10, arrivals=5, completions=5,
                     ttft=LatencyDist(bucket_upper_s=[1.0, 2.0], bucket_counts=[math.nan, 30.0])), "too few"),
    ],
)
def test_windows_that_are_not_evidence_give_no_reward(obs: Observation, why: str) -> None:
    score = evaluate(obs, P)
    assert score.reward is None
    assert score.why_none is not None and why in score.why_none


def test_idle_window_gives_no_reward_but_a_busy_one_does() -> None:
    idle = evaluate(window([0.3] * 50, queue=0), P)
    assert idle.reward is None and idle.idle
    busy = evaluate(window([0.3] * 50, queue=4), P)
    assert busy.reward == pytest.approx(1.0) and not busy.idle
    missed = evaluate(window([0.3] * 40 + [5.0] * 10, queue=0), P)  # empty queue but the SLO missed: evidence
    assert missed.reward is not None
    never = evaluate(window([0.3] * 50, queue=0), P.model_copy(update={"idle_queue_len": -1}))
    assert never.reward == pytest.approx(1.0)


def test_histogram_windows_work_like_samples() -> None:
    hist = LatencyDist(bucket_upper_s=[0.5, 1.0, 4.0, 16.0], bucket_counts=[60.0, 30.0, 9.0, 1.0])
    score = evaluate(Observation(start_s=0, end_s=10, arrivals=100, completions=100, ttft=hist, queue_len=3), P)
    assert score.reward is not None and 0.0 <= score.reward <= 1.0
    assert score.attainment == pytest.approx(hist.fraction_at_most(2.0))


@given(st.lists(st.floats(min_value=0.0, max_value=1e4), min_size=20, max_size=200),
       st.integers(min_value=0, max_value=1000), st.floats(min_value=0.0, max_value=1e5))
def test_reward_is_always_in_unit_interval(ttfts: list[float], queue: int, oldest: float) -> None:
    score = evaluate(window(ttfts, queue=queue, oldest_wait_s=oldest), P)
    assert score.reward is None or 0.0 <= score.reward <= 1.0
