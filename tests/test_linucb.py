"""LinUCB against a context-blind learner when the best arm depends on the context.

Environment: context x = (load, share), uniform on [0, 1]^2 from a seeded generator; Bernoulli rewards with
means 0.8 - 0.6 load (arm 1, FCFS-like), 0.2 + 0.6 load ("inf", LPM-like), 0.45 + 0.1 share (arm 4).
Averaged over contexts every arm is worth about 0.5, so a context-blind learner cannot do well.

Stated bounds (3 seeds, T = 1500): LinUCB's regret against the best arm of each context is at most 25% of
UCB1's, grows sub-linearly (R(T) / R(T/4) <= 3), and in the last 500 steps LinUCB plays the context's best
arm >= 80% of the time wherever that arm leads by >= 0.1. When load's effect reverses halfway through 2000
steps, LinUCB with discount 0.99 has at most 60% of the undiscounted form's regret over the second half.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from schedctl.bandits import LinUCB, LinUCBParams, bandit_from_state, make_bandit
from schedctl.bandits.base import Bandit

ARMS = [1, 4, "inf"]
HORIZON = 1500
SEEDS = range(3)


def arm_means(x: np.ndarray, flip: bool = False) -> np.ndarray:
    load, share = x
    if flip:  # the relation reversed, for the drift test
        load = 1.0 - load
    return np.array([0.8 - 0.6 * load, 0.45 + 0.1 * share, 0.2 + 0.6 * load])


def play(learner: Bandit, seed: int, horizon: int = HORIZON, flip_at: int | None = None):
    """(cumulative regret, chosen-is-best flags where the best leads by >= 0.1), per step."""
    rng = np.random.default_rng(seed)
    regret, clear_hits = np.empty(horizon), []
    for t in range(horizon):
        x = rng.uniform(0.0, 1.0, size=2)
        means = arm_means(x, flip=flip_at is not None and t >= flip_at)
        arm = learner.select(x)
        i = ARMS.index(arm)
        learner.update(arm, float(rng.random() < means[i]), x)
        regret[t] = means.max() - means[i]
        top2 = np.sort(means)[-2:]
        clear_hits.append((t, bool(i == int(np.argmax(means)))) if top2[1] - top2[0] >= 0.1 else (t, None))
    return np.cumsum(regret), clear_hits


class ContextBlind:
    """Wraps a discrete learner so it sees no context."""

    def __init__(self, inner: Bandit) -> None:
        self.inner = inner

    def select(self, context=None):
        return self.inner.select()

    def update(self, arm, reward, context=None) -> None:
        self.inner.update(arm, reward)


def test_linucb_beats_a_context_blind_bandit() -> None:
    lin = [play(make_bandit("linucb", ARMS, s, n_features=2), 100 + s) for s in SEEDS]
    blind = [play(ContextBlind(make_bandit("ucb1", ARMS, s)), 100 + s) for s in SEEDS]  # type: ignore[arg-type]
    r_lin = np.mean([r[-1] for r, _ in lin])
    r_blind = np.mean([r[-1] for r, _ in blind])
    assert r_lin <= 0.25 * r_blind, (r_lin, r_blind)
    assert np.mean([r[-1] for r, _ in lin]) / np.mean([r[HORIZON // 4 - 1] for r, _ in lin]) <= 3.0
    for _, hits in lin:
        late = [hit for t, hit in hits if t >= HORIZON - 500 and hit is not None]
        assert np.mean(late) >= 0.8


def test_discount_follows_a_reversed_relation() -> None:
    """Halfway, load's effect flips; discounted LinUCB recovers, the stationary one keeps its old belief longer."""
    after = []
    for discount in (1.0, 0.99):
        runs = [
            play(make_bandit("linucb", ARMS, s, n_features=2, discount=discount), 200 + s, 2000, 1000) for s in SEEDS
        ]
        after.append(np.mean([r[-1] - r[999] for r, _ in runs]))
    assert after[1] <= 0.6 * after[0], after


def test_estimates_recover_the_linear_model() -> None:
    learner = LinUCB(ARMS, 0, LinUCBParams(n_features=2, exploration=2.0))
    play(learner, 7, 3000)
    for x in ([0.1, 0.5], [0.9, 0.5]):
        est = learner.estimates(x)
        truth = arm_means(np.array(x))
        for arm, (mean, width) in est.items():
            assert abs(mean - truth[ARMS.index(arm)]) <= max(3 * width, 0.1)


def test_context_is_checked() -> None:
    learner = make_bandit("linucb", ARMS, 0, n_features=2)
    with pytest.raises(ValueError, match="needs a context"):
        learner.select()
    with pytest.raises(ValueError, match="3 features, expected 2"):
        learner.select([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        learner.update(1, 1.0, [np.nan, 0.0])
    assert learner.state()["steps"] == 0  # a refused update changes nothing


def test_arms_added_and_removed_and_state_round_trip() -> None:
    learner = make_bandit("linucb", [1, "inf"], 0, n_features=2)
    play_x = np.array([0.9, 0.5])
    for _ in range(50):
        learner.update(1, 0.2, play_x)
        learner.update("inf", 0.8, play_x)
    learner.add_arm(4)
    assert learner.select(play_x) == 4  # no data on the new arm: widest confidence
    learner.remove_arm("inf")
    assert learner.arms == (1, 4)
    restored = bandit_from_state(json.loads(json.dumps(learner.state())))
    assert [restored.select([0.3, 0.3]) for _ in range(3)] == [learner.select([0.3, 0.3]) for _ in range(3)]
