"""Name a learner and its parameters (as the controller's settings do) and get it built, or rebuilt from state.

    make_bandit("discounted_ucb", [1, 2, 4, 8, "inf"], seed=7, discount=0.98)
    bandit_from_state(json.loads(saved))

Parameters are checked by the learner's pydantic model (``params_model(name)``): an unknown name lists the
known ones, an unknown or bad parameter raises :class:`BanditConfigError` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schedctl.bandits.base import Arm, Bandit, BanditConfigError, DiscreteBandit, LearnerParams, Seed
from schedctl.bandits.exp3 import EXP3
from schedctl.bandits.linucb import LinUCB
from schedctl.bandits.thompson import (
    DiscountedThompsonBeta,
    DiscountedThompsonGaussian,
    ThompsonBeta,
    ThompsonGaussian,
)
from schedctl.bandits.ucb import UCB1, DiscountedUCB, SlidingWindowUCB

LEARNERS: dict[str, type[DiscreteBandit]] = {
    cls.name: cls
    for cls in (
        UCB1,
        SlidingWindowUCB,
        DiscountedUCB,
        ThompsonBeta,
        ThompsonGaussian,
        DiscountedThompsonBeta,
        DiscountedThompsonGaussian,
        EXP3,
        LinUCB,
    )
}
CONTEXTUAL = "contextual"  # ContextualBandit (schedctl.bandits.context): one learner per load bucket


def names() -> list[str]:
    """Every name ``make_bandit`` accepts."""
    return [*LEARNERS, CONTEXTUAL]


def _learner_class(name: str) -> type[Any]:
    if name == CONTEXTUAL:
        from schedctl.bandits.context import ContextualBandit  # context builds its learners with this module

        return ContextualBandit
    if name not in LEARNERS:
        raise BanditConfigError(str(name), "", f"unknown learner; known: {', '.join(names())}")
    return LEARNERS[name]


def params_model(name: str) -> type[LearnerParams]:
    """The pydantic model of ``name``'s parameters (for settings files and documentation)."""
    if name == CONTEXTUAL:
        from schedctl.bandits.context import ContextualParams

        return ContextualParams
    model: type[LearnerParams] = _learner_class(name).params_model
    return model


def make_bandit(name: str, arms: Iterable[Arm], seed: Seed, **params: Any) -> Bandit:
    """A new learner ``name`` over ``arms``; ``params`` are checked by ``params_model(name)``."""
    learner: Bandit = _learner_class(name)(arms, seed, params)
    return learner


def bandit_from_state(state: dict[str, Any]) -> Bandit:
    """Rebuild the learner that produced ``state`` (the output of its ``state()``, after a JSON round trip)."""
    name = state.get("algorithm") if isinstance(state, dict) else None
    if not isinstance(name, str):
        raise ValueError("not a learner state: no 'algorithm' field")
    learner: Bandit = _learner_class(name).from_state(state)
    return learner
