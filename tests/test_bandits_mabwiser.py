"""Agreement with a reference implementation: our UCB1 and Thompson sampling against MABWiser's.

Same stationary Bernoulli environment, same horizon (T = 1000), same reward draws (seeds 100..103); MABWiser is
played online (predict, then partial_fit on the one new reward) after one warm-up pull of every arm, which is
also what our learners do first. Stated agreement: both pick the same best arm (the most played arm of the last
third, which is the true best), and the mean regrets are within a factor 1.5 of each other.

MABWiser compares decisions with numpy (``rewards[decisions == arm]``), so mixed int/str labels such as
1, 2, 4, 8, "inf" silently break it (every decision becomes a string); it is given arm indices here.
"""

from __future__ import annotations

import numpy as np
import pytest

mabwiser = pytest.importorskip("mabwiser.mab")

from schedctl.bandits import make_bandit  # noqa: E402
from schedctl.bandits.synthetic import SimResult, simulate, stationary  # noqa: E402

ARMS = [1, 2, 4, 8, "inf"]
MEANS = [0.3, 0.45, 0.7, 0.55, 0.2]
HORIZON = 1000
SEEDS = range(4)


class MabwiserOnline:
    """MABWiser behind our select/update protocol."""

    def __init__(self, policy, seed: int) -> None:
        self.mab = mabwiser.MAB(arms=list(range(len(ARMS))), learning_policy=policy, seed=seed)
        self.warmup: list[int] = list(range(len(ARMS)))
        self.seen: tuple[list[int], list[float]] = ([], [])

    def select(self, context=None):
        if self.warmup:
            return ARMS[self.warmup[0]]
        return ARMS[int(self.mab.predict())]

    def update(self, arm, reward: float, context=None) -> None:
        i = ARMS.index(arm)
        if self.warmup:
            self.warmup.pop(0)
            self.seen[0].append(i)
            self.seen[1].append(reward)
            if not self.warmup:
                self.mab.fit(*self.seen)
            return
        self.mab.partial_fit([i], [reward])


def most_played_late(run: SimResult):
    late = run.choices[2 * HORIZON // 3 :]
    return max(ARMS, key=late.count)


@pytest.mark.parametrize(
    ("ours", "policy"),
    [
        ("ucb1", mabwiser.LearningPolicy.UCB1(alpha=1.0)),
        ("thompson_beta", mabwiser.LearningPolicy.ThompsonSampling()),
    ],
)
def test_same_best_arm_and_regret_of_the_same_order(ours: str, policy) -> None:
    env = stationary(MEANS, ARMS)
    mine = [simulate(make_bandit(ours, ARMS, s), env, HORIZON, 100 + s) for s in SEEDS]
    ref = [simulate(MabwiserOnline(policy, s), env, HORIZON, 100 + s) for s in SEEDS]  # type: ignore[arg-type]
    best = env.best_arm(0)
    assert all(most_played_late(r) == best for r in mine)
    assert all(most_played_late(r) == best for r in ref)
    r_mine = float(np.mean([r.regret[-1] for r in mine]))
    r_ref = float(np.mean([r.regret[-1] for r in ref]))
    assert r_ref / 1.5 <= r_mine <= r_ref * 1.5, (r_mine, r_ref)
