"""Non-stationary learners after an abrupt change of the best arm, and under slow drift.

Abrupt change (arms 1, 4, "inf"; means [0.3, 0.7, 0.5] for 4000 steps, then [0.3, 0.7, 0.9]): the new best arm
was a well-sampled loser, the classic case where a learner that averages all history is slow. "Found" means
the new best arm takes >= 80% of a 50-step window starting at that step.

Stated bounds (4 seeds): sliding-window UCB, discounted UCB and discounted Thompson (Beta and Gaussian) find the
new best arm within 250 steps on every seed and play it >= 75% of steps 250..500 after the change; plain UCB1
(with the same exploration, 0.25) misses the 250-step bound on at least half the seeds and plays the new arm
<= 50% of those steps on average; stationary Thompson sampling never finds it within 250 steps.
Slow drift: discounted Thompson sampling has at most 60% of the dynamic regret of its stationary form.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from schedctl.bandits import make_bandit
from schedctl.bandits.synthetic import SimResult, abrupt, drifting, simulate

ARMS = [1, 4, "inf"]
CHANGE_STEP = 4000
AFTER_STEPS = 500
FIND_WITHIN_STEPS = 250
SEEDS = range(4)
ENV = abrupt([(0, [0.3, 0.7, 0.5]), (CHANGE_STEP, [0.3, 0.7, 0.9])], ARMS)
NEW_BEST = "inf"


def steps_to_find(run: SimResult, arm, start: int, window: int = 50, share: float = 0.8) -> int | None:
    played = np.array([a == arm for a in run.choices], dtype=float)
    for t in range(start, len(played) - window + 1):
        if played[t : t + window].mean() >= share:
            return t - start
    return None


@functools.cache
def _runs(name: str, params: tuple[tuple[str, float], ...]) -> tuple[SimResult, ...]:
    horizon = CHANGE_STEP + AFTER_STEPS
    return tuple(simulate(make_bandit(name, ARMS, s, **dict(params)), ENV, horizon, 1000 + s) for s in SEEDS)


def runs(name: str, **params: float) -> tuple[SimResult, ...]:
    """The runs of ``name`` on the abrupt environment (computed once per module, shared by the tests)."""
    return _runs(name, tuple(sorted(params.items())))


def later_share(run: SimResult) -> float:
    return run.share(NEW_BEST, CHANGE_STEP + FIND_WITHIN_STEPS, CHANGE_STEP + AFTER_STEPS)


@pytest.mark.parametrize(
    "name", ["sliding_window_ucb", "discounted_ucb", "discounted_thompson_beta", "discounted_thompson_gaussian"]
)
def test_non_stationary_learners_find_the_new_best_arm(name: str) -> None:
    for run in runs(name):
        assert ENV.best_arm(CHANGE_STEP - 1) == 4 and ENV.best_arm(CHANGE_STEP) == NEW_BEST
        found = steps_to_find(run, NEW_BEST, CHANGE_STEP)
        assert found is not None and found <= FIND_WITHIN_STEPS, found
        assert later_share(run) >= 0.75


def test_plain_ucb1_does_not() -> None:
    results = runs("ucb1", exploration=0.25)
    found = [steps_to_find(r, NEW_BEST, CHANGE_STEP) for r in results]
    missed = [f for f in found if f is None or f > FIND_WITHIN_STEPS]
    assert len(missed) >= len(found) / 2, found
    assert np.mean([later_share(r) for r in results]) <= 0.5


def test_plain_thompson_does_not() -> None:
    for run in runs("thompson_beta"):
        found = steps_to_find(run, NEW_BEST, CHANGE_STEP)
        assert found is None or found > FIND_WITHIN_STEPS


def test_before_the_change_all_of_them_had_learned_the_old_best() -> None:
    """The comparison is fair: every learner was exploiting the old best arm when the change came."""
    for name in ["ucb1", "sliding_window_ucb", "discounted_ucb", "discounted_thompson_beta"]:
        for run in runs(name, **({"exploration": 0.25} if name == "ucb1" else {}))[:2]:
            assert run.share(4, CHANGE_STEP - 500, CHANGE_STEP) >= 0.6


@pytest.mark.parametrize(
    ("stationary_name", "discounted_name"),
    [("thompson_beta", "discounted_thompson_beta"), ("thompson_gaussian", "discounted_thompson_gaussian")],
)
def test_discounting_tracks_slow_drift(stationary_name: str, discounted_name: str) -> None:
    env = drifting([0.5] * 5, amplitude=0.3, period_steps=1500, arms=[1, 2, 4, 8, "inf"])

    def regret(name: str) -> float:
        return float(np.mean([simulate(make_bandit(name, env.arms, s), env, 3000, 1000 + s).regret[-1] for s in SEEDS]))

    assert regret(discounted_name) <= 0.6 * regret(stationary_name)
