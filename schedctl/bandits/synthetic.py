"""Seeded synthetic environments to test and compare learners: stationary, abruptly changing, slowly drifting.

An environment gives each arm an expected reward at every step (``means(t)``) and draws a noisy reward around
it (Bernoulli, or Gaussian with ``noise_std``). ``simulate`` plays a learner against it and returns the choices
and the pseudo-regret: the sum over steps of ``max_a mean_a(t) - mean_chosen(t)``, i.e. regret against the
best arm of each moment (dynamic regret), which is what a non-stationary learner should keep small. Pure:
randomness comes from the seed given.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from schedctl.bandits.base import Arm, Bandit


@dataclass(frozen=True)
class SyntheticEnv:
    arms: tuple[Arm, ...]
    mean_fn: Callable[[int], np.ndarray]  # step -> expected reward of each arm (in ``arms`` order)
    noise: Literal["bernoulli", "gaussian"] = "bernoulli"
    noise_std: float = 0.1

    def means(self, t: int) -> np.ndarray:
        return self.mean_fn(t)

    def best_arm(self, t: int) -> Arm:
        return self.arms[int(np.argmax(self.means(t)))]

    def reward(self, arm: Arm, t: int, rng: np.random.Generator) -> float:
        return self.draw(float(self.means(t)[self.arms.index(arm)]), rng)

    def draw(self, mean: float, rng: np.random.Generator) -> float:
        """One noisy reward around ``mean``."""
        if self.noise == "bernoulli":
            return float(rng.random() < mean)
        return mean + self.noise_std * float(rng.standard_normal())


def stationary(
    means: Sequence[float], arms: Sequence[Arm] | None = None, noise: Literal["bernoulli", "gaussian"] = "bernoulli"
) -> SyntheticEnv:
    m = np.asarray(means, dtype=float)
    return SyntheticEnv(tuple(arms) if arms is not None else tuple(range(len(m))), lambda t: m, noise)


def abrupt(segments: Sequence[tuple[int, Sequence[float]]], arms: Sequence[Arm] | None = None) -> SyntheticEnv:
    """Piecewise-constant Bernoulli means: ``segments`` = [(first_step, means), ...], the first at step 0."""
    starts = [s for s, _ in segments]
    if starts[0] != 0 or starts != sorted(starts):
        raise ValueError("segments must start at step 0 and be in order")
    table = [np.asarray(m, dtype=float) for _, m in segments]

    def mean_fn(t: int) -> np.ndarray:
        return table[bisect.bisect_right(starts, t) - 1]

    return SyntheticEnv(tuple(arms) if arms is not None else tuple(range(len(table[0]))), mean_fn)


def drifting(
    base: Sequence[float], amplitude: float, period_steps: float, arms: Sequence[Arm] | None = None
) -> SyntheticEnv:
    """Bernoulli means ``base_i + amplitude * sin(2 pi t / period + 2 pi i / K)``, clipped to [0, 1]."""
    b = np.asarray(base, dtype=float)
    phase = 2.0 * np.pi * np.arange(b.size) / b.size

    def mean_fn(t: int) -> np.ndarray:
        return np.clip(b + amplitude * np.sin(2.0 * np.pi * t / period_steps + phase), 0.0, 1.0)

    return SyntheticEnv(tuple(arms) if arms is not None else tuple(range(b.size)), mean_fn)


@dataclass(frozen=True)
class SimResult:
    choices: list[Arm]
    rewards: np.ndarray
    regret: np.ndarray  # cumulative pseudo-regret after each step

    def share(self, arm: Arm, start: int, stop: int) -> float:
        """Fraction of steps in [start, stop) that played ``arm``."""
        window = self.choices[start:stop]
        return sum(1 for a in window if a == arm) / max(len(window), 1)


def simulate(
    bandit: Bandit,
    env: SyntheticEnv,
    horizon_steps: int,
    seed: int,
    context_fn: Callable[[int], Any] | None = None,
) -> SimResult:
    """Play ``bandit`` for ``horizon_steps`` steps; rewards are drawn from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    choices: list[Arm] = []
    rewards: list[float] = []
    step_regret: list[float] = []
    for t in range(horizon_steps):
        context = context_fn(t) if context_fn is not None else None
        arm = bandit.select(context)
        means = env.means(t).tolist()
        mean = means[env.arms.index(arm)]
        reward = env.draw(mean, rng)
        bandit.update(arm, reward, context)
        choices.append(arm)
        rewards.append(reward)
        step_regret.append(max(means) - mean)
    return SimResult(choices, np.array(rewards), np.cumsum(step_regret))
