"""EXP3 (Auer, Cesa-Bianchi, Freund, Schapire 2002): exponential weights for adversarial rewards in [0, 1].

Play arm i with probability ``p_i = (1 - gamma) * w_i / sum(w) + gamma / K``; after reward r on arm i, raise
its weight by ``exp(gamma * (r / p_i) / K)`` (an unbiased importance-weighted estimate). No assumption about how
rewards are generated, so it tolerates an opponent, at the price of slower learning than UCB or Thompson on
easy stationary problems. With ``gamma = min(1, sqrt(K ln K / ((e - 1) T)))`` the expected regret against the
best fixed arm is at most ``2 sqrt(e - 1) sqrt(T K ln K)`` (Corollary 3.2 of the paper).

Weights are kept as logarithms (shifted so the largest is 0) so they never overflow. A new arm starts with
the largest weight, so it is tried soon. The importance weight uses the probabilities at update time, which
are those of the last ``select`` when nothing changed in between.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from schedctl.bandits.base import Arm, DiscreteBandit, LearnerParams


class EXP3Params(LearnerParams):
    gamma: float = Field(default=0.1, gt=0, le=1, description="share of uniform exploration")


class EXP3(DiscreteBandit):
    name = "exp3"
    params_model = EXP3Params
    params: EXP3Params
    reward_range = (0.0, 1.0)
    _arm_stats = ("_log_w",)
    _log_w: dict[Arm, float]

    def probabilities(self) -> dict[Arm, float]:
        """The probability of playing each arm next."""
        gamma, k = self.params.gamma, len(self._arms)
        log_w = np.array([self._log_w[a] for a in self._arms])
        w = np.exp(log_w - log_w.max())
        p = (1.0 - gamma) * w / w.sum() + gamma / k
        return dict(zip(self._arms, p.tolist(), strict=True))

    def _select(self) -> Arm:
        p = self.probabilities()
        probs = np.array([p[a] for a in self._arms])
        return self._arms[int(self._rng.choice(len(self._arms), p=probs / probs.sum()))]

    def _update(self, arm: Arm, reward: float) -> None:
        p_arm = self.probabilities()[arm]
        self._log_w[arm] += self.params.gamma * (reward / p_arm) / len(self._arms)
        top = max(self._log_w.values())
        for a in self._arms:
            self._log_w[a] -= top

    def _new_arm_stats(self, arm: Arm) -> dict[str, float]:
        return {"_log_w": max(self._log_w.values(), default=0.0)}


def exp3_gamma_for_horizon(n_arms: int, horizon_steps: int) -> float:
    """The exploration share that minimises EXP3's regret bound for a known horizon."""
    if n_arms < 2:
        return 1.0
    return min(1.0, math.sqrt(n_arms * math.log(n_arms) / ((math.e - 1.0) * horizon_steps)))
