"""Upper-confidence-bound learners: UCB1 (stationary), sliding-window UCB and discounted UCB (non-stationary).

All three play the arm with the highest ``mean + exploration * sqrt(2 ln(n_total) / n_arm)``; an arm with no
data scores +inf, so new arms are tried first. They differ in what ``mean`` and ``n`` count:

- UCB1 (Auer, Cesa-Bianchi, Fischer 2002): everything since the start. When an arm it has sampled as a loser
  becomes the best, its mean moves by 1/n per pull and it is pulled about once per t/ln(t) steps, so noticing
  takes longer the longer it has run (with ``exploration = 1`` it re-checks losers often enough to catch
  early changes; smaller values make it blind to them).
- Sliding-window UCB (Garivier & Moulines 2011): only the last ``window_steps`` updates; ``n_total`` is
  ``min(steps, window_steps)``. An arm that fell out of the window is re-explored.
- Discounted UCB (Kocsis & Szepesvári 2006; Garivier & Moulines 2011): every update first multiplies all counts
  and sums by ``discount``; the effective memory is about ``1 / (1 - discount)`` updates.

With rewards in [0, 1] and ``exploration = 1`` (its default), UCB1's expected regret after T steps is at most
``sum_i 8 ln T / gap_i + (1 + pi^2 / 3) sum_i gap_i`` (Auer et al., Theorem 1). Rewards on another scale
want ``exploration`` of the order of the reward range. The windowed and discounted forms default to
``exploration = 0.25`` and a memory of about 200 updates: their counts stay small, so they re-explore all the
time anyway, and on the synthetic environments of ``benchmarks/bandit_regret.py`` 0.5 and 1.0 cost them
roughly twice and four times the regret. Rewards with less noise than a coin flip (a window's SLO attainment)
can take less.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from pydantic import Field

from schedctl.bandits.base import Arm, DiscreteBandit, LearnerParams, decode_arm, encode_arm


class UCB1Params(LearnerParams):
    exploration: float = Field(default=1.0, gt=0, description="multiplier of the confidence radius")


class SlidingWindowUCBParams(LearnerParams):
    exploration: float = Field(default=0.25, gt=0, description="multiplier of the confidence radius")
    window_steps: int = Field(default=200, ge=1, description="updates remembered")


class DiscountedUCBParams(LearnerParams):
    exploration: float = Field(default=0.25, gt=0, description="multiplier of the confidence radius")
    discount: float = Field(default=0.995, gt=0, lt=1, description="weight kept per update; memory ~ 1/(1-discount)")


def _ucb_scores(
    arms: list[Arm], n: dict[Arm, float], s: dict[Arm, float], n_total: float, c: float
) -> dict[Arm, float]:
    log_total = math.log(max(n_total, 1.0))
    scores: dict[Arm, float] = {}
    for arm in arms:
        if n[arm] <= 0:
            scores[arm] = math.inf
        else:
            scores[arm] = s[arm] / n[arm] + c * math.sqrt(2.0 * log_total / n[arm])
    return scores


class UCB1(DiscreteBandit):
    """UCB1: optimism in the face of uncertainty, with all history."""

    name = "ucb1"
    params_model = UCB1Params
    params: UCB1Params
    _arm_stats = ("_n", "_sum")
    _n: dict[Arm, float]
    _sum: dict[Arm, float]

    def _select(self) -> Arm:
        n_total = sum(self._n.values())
        return self._argmax(_ucb_scores(self._arms, self._n, self._sum, n_total, self.params.exploration))

    def _update(self, arm: Arm, reward: float) -> None:
        self._n[arm] += 1.0
        self._sum[arm] += reward


class DiscountedUCB(UCB1):
    """Discounted UCB: UCB1 whose counts and sums fade by ``discount`` per update."""

    name = "discounted_ucb"
    params_model = DiscountedUCBParams  # type: ignore[assignment]
    params: DiscountedUCBParams  # type: ignore[assignment]

    def _update(self, arm: Arm, reward: float) -> None:
        self._discount_stats(self.params.discount)
        super()._update(arm, reward)


class SlidingWindowUCB(DiscreteBandit):
    """Sliding-window UCB: statistics over the last ``window_steps`` updates only."""

    name = "sliding_window_ucb"
    params_model = SlidingWindowUCBParams
    params: SlidingWindowUCBParams
    _arm_stats = ("_n", "_sum")
    _n: dict[Arm, float]
    _sum: dict[Arm, float]

    def __init__(self, arms: Any, seed: Any, params: Any = None) -> None:
        self._window: deque[tuple[Arm, float]] = deque()
        super().__init__(arms, seed, params)

    def _select(self) -> Arm:
        n_total = min(self.steps, self.params.window_steps)
        return self._argmax(_ucb_scores(self._arms, self._n, self._sum, n_total, self.params.exploration))

    def _update(self, arm: Arm, reward: float) -> None:
        self._window.append((arm, reward))
        self._n[arm] += 1.0
        self._sum[arm] += reward
        while len(self._window) > self.params.window_steps:
            old_arm, old_reward = self._window.popleft()
            if old_arm in self._n:
                self._n[old_arm] -= 1.0
                self._sum[old_arm] -= old_reward
                if self._n[old_arm] <= 0:  # no float residue once an arm has left the window
                    self._n[old_arm], self._sum[old_arm] = 0.0, 0.0

    def _forget_arm(self, arm: Arm) -> None:
        self._window = deque((a, r) for a, r in self._window if a != arm)

    def _extra_state(self) -> dict[str, Any]:
        return {"window": [[encode_arm(a), r] for a, r in self._window]}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._window = deque((decode_arm(a), float(r)) for a, r in extra["window"])
