"""LinUCB with disjoint linear models (Li, Chu, Langford, Schapire 2010), over a numeric context vector.

Each arm a keeps a ridge regression of reward on the context x: ``A_a = ridge * I + sum x x^T``,
``b_a = sum r x``, ``theta_a = A_a^-1 b_a``. The learner plays the arm with the highest
``theta_a . x + exploration * sqrt(x^T A_a^-1 x)``. Unlike a discrete learner per load bucket
(:class:`schedctl.bandits.context.ContextualBandit`) it shares what it learns across nearby contexts, and the
best arm may change with the context. Features should be of order one (scale rates and queue lengths);
``fit_intercept`` appends a constant 1 so an arm's baseline reward needs no feature of its own.

``discount`` below 1 fades old evidence (``A <- discount * A + (1 - discount) * ridge * I``, ``b <- discount * b``
for every arm at each update), for load patterns whose effect drifts; 1 keeps everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from schedctl.bandits.base import Arm, DiscreteBandit, LearnerParams


class LinUCBParams(LearnerParams):
    n_features: int = Field(ge=1, description="length of the context vector (without the intercept)")
    exploration: float = Field(default=1.0, gt=0, description="multiplier of the confidence width (alpha)")
    ridge: float = Field(default=1.0, gt=0, description="L2 regularisation; the prior precision")
    fit_intercept: bool = True
    discount: float = Field(default=1.0, gt=0, le=1, description="evidence kept per update; 1 = stationary")


class LinUCB(DiscreteBandit):
    name = "linucb"
    params_model = LinUCBParams
    params: LinUCBParams

    def __init__(self, arms: Any, seed: Any, params: Any = None) -> None:
        self._a: dict[Arm, np.ndarray] = {}
        self._b: dict[Arm, np.ndarray] = {}
        super().__init__(arms, seed, params)

    @property
    def dim(self) -> int:
        return self.params.n_features + (1 if self.params.fit_intercept else 0)

    def features(self, context: Any) -> np.ndarray:
        """The context as the model's feature vector (with the intercept when asked for)."""
        if context is None:
            raise ValueError(f"{self.name}: needs a context vector of {self.params.n_features} numbers")
        x = np.asarray(context, dtype=float).reshape(-1)
        if x.size != self.params.n_features:
            raise ValueError(f"{self.name}: context has {x.size} features, expected {self.params.n_features}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{self.name}: context has non-finite values: {x.tolist()}")
        return np.append(x, 1.0) if self.params.fit_intercept else x

    def estimates(self, context: Sequence[float] | np.ndarray) -> dict[Arm, tuple[float, float]]:
        """(predicted reward, confidence width) per arm for this context."""
        x = self.features(context)
        a = np.stack([self._a[arm] for arm in self._arms])  # (arms, d, d)
        rhs = np.stack([np.column_stack([x, self._b[arm]]) for arm in self._arms])  # (arms, d, 2)
        sol = np.linalg.solve(a, rhs)  # columns: A^-1 x, A^-1 b = theta
        means = sol[:, :, 1] @ x
        widths = np.sqrt(np.maximum(sol[:, :, 0] @ x, 0.0))
        return {arm: (float(m), float(w)) for arm, m, w in zip(self._arms, means, widths, strict=True)}

    def select(self, context: Any = None) -> Arm:
        if not self._arms:
            raise ValueError(f"{self.name}: no arms to choose from")
        c = self.params.exploration
        scores = {arm: mean + c * width for arm, (mean, width) in self.estimates(context).items()}
        return self._argmax(scores)

    def update(self, arm: Arm, reward: float, context: Any = None) -> None:
        x = self.features(context)  # check the context before changing anything
        super().update(arm, reward, context)
        g = self.params.discount
        if g < 1.0:
            eye = np.eye(self.dim) * (1.0 - g) * self.params.ridge
            for a in self._arms:
                self._a[a] = g * self._a[a] + eye
                self._b[a] = g * self._b[a]
        self._a[arm] = self._a[arm] + np.outer(x, x)
        self._b[arm] = self._b[arm] + reward * x

    def _update(self, arm: Arm, reward: float) -> None:
        """Unused: ``update`` needs the context, so it does the work itself."""

    def _new_arm_stats(self, arm: Arm) -> dict[str, Any]:
        self._a[arm] = np.eye(self.dim) * self.params.ridge
        self._b[arm] = np.zeros(self.dim)
        return {}

    def _forget_arm(self, arm: Arm) -> None:
        del self._a[arm], self._b[arm]

    def _extra_state(self) -> dict[str, Any]:
        return {"A": [self._a[a].tolist() for a in self._arms], "b": [self._b[a].tolist() for a in self._arms]}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self._a = {a: np.array(m, dtype=float) for a, m in zip(self._arms, extra["A"], strict=True)}
        self._b = {a: np.array(v, dtype=float) for a, v in zip(self._arms, extra["b"], strict=True)}
