"""Thompson sampling: play the arm whose reward, drawn from its posterior, is highest.

- ``ThompsonBeta``: Beta(prior_alpha + successes, prior_beta + failures) per arm, for rewards in [0, 1]
  (SLO attainment). A fractional reward r counts as r of a success and 1 - r of a failure.
- ``ThompsonGaussian``: a Normal posterior on each arm's mean with known noise ``noise_std`` and a Normal
  prior (``prior_mean``, ``prior_std``), for unbounded rewards (tail-latency ratios).

Both take ``discount`` (1 = stationary). Below 1 they are discounted Thompson sampling (Raj & Kalyani 2017):
every update first multiplies all arms' evidence by ``discount``, so the posteriors widen back towards the
prior for arms that are not played and the learner re-explores after a change. The factory names the
discounted forms ``discounted_thompson_beta`` / ``discounted_thompson_gaussian`` (default discount 0.995,
a memory of about 200 updates).
"""

from __future__ import annotations

import math

from pydantic import Field

from schedctl.bandits.base import Arm, DiscreteBandit, LearnerParams


class ThompsonBetaParams(LearnerParams):
    prior_alpha: float = Field(default=1.0, gt=0)
    prior_beta: float = Field(default=1.0, gt=0)
    discount: float = Field(default=1.0, gt=0, le=1, description="evidence kept per update; 1 = stationary")


class DiscountedThompsonBetaParams(ThompsonBetaParams):
    discount: float = Field(default=0.995, gt=0, le=1, description="evidence kept per update; 1 = stationary")


class ThompsonGaussianParams(LearnerParams):
    prior_mean: float = 0.0
    prior_std: float = Field(default=1.0, gt=0)
    noise_std: float = Field(default=0.5, gt=0, description="assumed standard deviation of one reward")
    discount: float = Field(default=1.0, gt=0, le=1, description="evidence kept per update; 1 = stationary")


class DiscountedThompsonGaussianParams(ThompsonGaussianParams):
    discount: float = Field(default=0.995, gt=0, le=1, description="evidence kept per update; 1 = stationary")


class ThompsonBeta(DiscreteBandit):
    """Beta-Bernoulli Thompson sampling (rewards in [0, 1])."""

    name = "thompson_beta"
    params_model = ThompsonBetaParams
    params: ThompsonBetaParams
    reward_range = (0.0, 1.0)
    _arm_stats = ("_successes", "_failures")
    _successes: dict[Arm, float]
    _failures: dict[Arm, float]

    def _select(self) -> Arm:
        p = self.params
        draws = {
            a: float(self._rng.beta(p.prior_alpha + self._successes[a], p.prior_beta + self._failures[a]))
            for a in self._arms
        }
        return self._argmax(draws)

    def _update(self, arm: Arm, reward: float) -> None:
        self._discount_stats(self.params.discount)
        self._successes[arm] += reward
        self._failures[arm] += 1.0 - reward


class DiscountedThompsonBeta(ThompsonBeta):
    name = "discounted_thompson_beta"
    params_model = DiscountedThompsonBetaParams


class ThompsonGaussian(DiscreteBandit):
    """Gaussian Thompson sampling with known noise."""

    name = "thompson_gaussian"
    params_model = ThompsonGaussianParams
    params: ThompsonGaussianParams
    _arm_stats = ("_n", "_sum")
    _n: dict[Arm, float]
    _sum: dict[Arm, float]

    def posterior(self, arm: Arm) -> tuple[float, float]:
        """(mean, std) of the posterior on ``arm``'s mean reward."""
        p = self.params
        prior_precision = 1.0 / p.prior_std**2
        precision = prior_precision + self._n[arm] / p.noise_std**2
        mean = (p.prior_mean * prior_precision + self._sum[arm] / p.noise_std**2) / precision
        return mean, 1.0 / math.sqrt(precision)

    def _select(self) -> Arm:
        draws = {}
        for a in self._arms:
            mean, std = self.posterior(a)
            draws[a] = float(self._rng.normal(mean, std))
        return self._argmax(draws)

    def _update(self, arm: Arm, reward: float) -> None:
        self._discount_stats(self.params.discount)
        self._n[arm] += 1.0
        self._sum[arm] += reward


class DiscountedThompsonGaussian(ThompsonGaussian):
    name = "discounted_thompson_gaussian"
    params_model = DiscountedThompsonGaussianParams
