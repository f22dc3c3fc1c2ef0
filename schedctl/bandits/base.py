"""What every learner shares: the protocol, arm labels that survive JSON, seeded randomness, parameter checks.

A learner chooses one arm per tick and is told the reward of the arm it played::

    arm = learner.select(context)          # context: ignored by discrete learners
    ...run the engine with `arm` for a window...
    learner.update(arm, reward, context)

``state()`` returns a JSON-safe dict and ``from_state(d)`` rebuilds a learner that makes the same next choice,
so a restarted sidecar keeps what it learned. Arms are labels such as the k of k-LPM (1, 2, 4, 8, "inf").
JSON would turn the int 1 used as an object key into the string "1" and lose tuples, so arms are stored as
tagged pairs (``["int", 1]``, ``["str", "inf"]``) in a list, and per-arm statistics as lists in the same order.

Why not MABWiser or another library: they assume stationary rewards (no sliding window, no discounting), keep
no JSON state and do not let arms come and go mid-run; schedctl's load changes under the learner. MABWiser is
used in the tests as a reference on stationary environments.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

Arm = Hashable
Seed = int | np.random.Generator
STATE_VERSION = 1

P = TypeVar("P", bound=BaseModel)


class BanditConfigError(ValueError):
    """A learner was named or configured wrongly; ``str(err)`` names the learner, the field and the reason."""

    def __init__(self, learner: str, field: str, reason: str) -> None:
        self.learner, self.field, self.reason = learner, field, reason
        super().__init__(f"{learner}: {field}: {reason}" if field else f"{learner}: {reason}")


class LearnerParams(BaseModel):
    """Base of every learner's parameters: unknown fields are refused, values are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_params(model: type[P], learner: str, params: Any) -> P:
    """``params`` (a dict or a model instance) as ``model``; a failure raises BanditConfigError naming the field."""
    if isinstance(params, model):
        return params
    if isinstance(params, BaseModel):
        params = params.model_dump()
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "(params)"
        raise BanditConfigError(learner, field, first.get("msg", "invalid value")) from None


@runtime_checkable
class Bandit(Protocol):
    """The protocol the controller programs against."""

    @property
    def arms(self) -> tuple[Arm, ...]: ...

    def select(self, context: Any = None) -> Arm: ...

    def update(self, arm: Arm, reward: float, context: Any = None) -> None: ...

    def add_arm(self, arm: Arm) -> None: ...

    def remove_arm(self, arm: Arm) -> None: ...

    def state(self) -> dict[str, Any]: ...

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self: ...


# --- arm labels <-> JSON ---------------------------------------------------------------------------------------


def normalize_arm(arm: Any) -> Arm:
    """The arm as a plain Python label (numpy scalars become int/float/bool); unsupported labels raise TypeError."""
    if isinstance(arm, np.bool_):
        return bool(arm)
    if isinstance(arm, np.integer):
        return int(arm)
    if isinstance(arm, np.floating):
        return float(arm)
    if arm is None or isinstance(arm, bool | int | float | str):
        return arm
    if isinstance(arm, tuple):
        return tuple(normalize_arm(a) for a in arm)
    raise TypeError(f"arm labels must be int, float, str, bool, None or tuples of these; got {type(arm).__name__}")


def encode_arm(arm: Arm) -> list[Any]:
    """A JSON-safe tagged pair that :func:`decode_arm` turns back into exactly ``arm``."""
    arm = normalize_arm(arm)
    if arm is None:
        return ["none", None]
    if isinstance(arm, bool):  # before int: bool is an int subclass
        return ["bool", arm]
    if isinstance(arm, int):
        return ["int", arm]
    if isinstance(arm, float):
        return ["float", repr(arm)]  # repr keeps inf, nan and every bit of the value
    if isinstance(arm, str):
        return ["str", arm]
    assert isinstance(arm, tuple)
    return ["tuple", [encode_arm(a) for a in arm]]


def decode_arm(data: Any) -> Arm:
    tag, value = data
    if tag == "none":
        return None
    if tag == "bool":
        return bool(value)
    if tag == "int":
        return int(value)
    if tag == "float":
        return float(value)
    if tag == "str":
        return str(value)
    if tag == "tuple":
        return tuple(decode_arm(v) for v in value)
    raise ValueError(f"unknown arm tag {tag!r}")


# --- seeded randomness ------------------------------------------------------------------------------------------


def make_rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int seed (or the Generator itself, shared with the caller)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int or a numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's bit-generator state (plain ints and strings; Python's json keeps the big ints exact)."""
    return dict(rng.bit_generator.state)


def state_header(name: str, params: BaseModel, arms: Iterable[Arm], rng: np.random.Generator) -> dict[str, Any]:
    """The part every learner's JSON state shares: algorithm, state version, parameters, arms and generator."""
    return {
        "algorithm": name,
        "version": STATE_VERSION,
        "params": params.model_dump(mode="json"),
        "arms": [encode_arm(a) for a in arms],
        "rng": rng_state(rng),
    }


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def check_reward(learner: str, reward: float, low: float = -math.inf, high: float = math.inf) -> float:
    """The reward as a float; NaN, infinities and values outside [low, high] raise ValueError."""
    r = float(reward)
    if not math.isfinite(r):
        raise ValueError(f"{learner}: reward must be a finite number, got {reward!r}")
    if not low <= r <= high:
        raise ValueError(f"{learner}: reward must lie in [{low}, {high}], got {r}")
    return r


# --- the shared base of discrete learners -----------------------------------------------------------------------


class DiscreteBandit:
    """Arms, the seeded generator, the step count and JSON state; subclasses add scores and statistics.

    A subclass names its per-arm statistics in ``_arm_stats`` (each a ``dict[arm, float]`` attribute), gives
    their initial values in ``_new_arm_stats`` and implements ``_select`` and ``_update``. Anything else it keeps
    goes through ``_extra_state`` / ``_load_extra_state``.
    """

    name: ClassVar[str]
    params_model: ClassVar[type[LearnerParams]]
    _arm_stats: ClassVar[tuple[str, ...]] = ()
    reward_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)

    def __init__(self, arms: Iterable[Arm], seed: Seed, params: Any = None) -> None:
        self.params = validate_params(self.params_model, self.name, {} if params is None else params)
        self._rng = make_rng(seed)
        self._arms: list[Arm] = []
        self.steps = 0  # updates seen
        for stat in self._arm_stats:
            setattr(self, stat, {})
        for arm in arms:
            self.add_arm(arm)

    @property
    def arms(self) -> tuple[Arm, ...]:
        return tuple(self._arms)

    def add_arm(self, arm: Arm) -> None:
        """Add an arm while running; it starts with no data (so UCB-style learners try it soon)."""
        arm = normalize_arm(arm)
        if arm in self._arms:
            raise ValueError(f"{self.name}: arm {arm!r} is already present")
        self._arms.append(arm)
        for stat, value in self._new_arm_stats(arm).items():
            getattr(self, stat)[arm] = value

    def remove_arm(self, arm: Arm) -> None:
        """Remove an arm and everything learned about it."""
        self._check_arm(arm)
        self._arms.remove(arm)
        for stat in self._arm_stats:
            del getattr(self, stat)[arm]
        self._forget_arm(arm)

    def select(self, context: Any = None) -> Arm:
        if not self._arms:
            raise ValueError(f"{self.name}: no arms to choose from")
        return self._select()

    def update(self, arm: Arm, reward: float, context: Any = None) -> None:
        self._check_arm(arm)
        r = check_reward(self.name, reward, *self.reward_range)
        self.steps += 1
        self._update(arm, r)

    # --- JSON state ---

    def state(self) -> dict[str, Any]:
        return {
            **state_header(self.name, self.params, self._arms, self._rng),
            "steps": self.steps,
            "arm_stats": {stat: [getattr(self, stat)[a] for a in self._arms] for stat in self._arm_stats},
            "extra": self._extra_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("algorithm") != cls.name:
            raise ValueError(f"state is for {state.get('algorithm')!r}, not {cls.name!r}")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{cls.name}: unsupported state version {state.get('version')!r}")
        learner = cls([], 0, state["params"])
        learner._rng = rng_from_state(state["rng"])
        learner.steps = int(state["steps"])
        for encoded in state["arms"]:
            learner.add_arm(decode_arm(encoded))
        for stat, values in state["arm_stats"].items():
            setattr(learner, stat, dict(zip(learner._arms, values, strict=True)))
        learner._load_extra_state(state["extra"])
        return learner

    # --- helpers and hooks ---

    def _check_arm(self, arm: Arm) -> None:
        if arm not in self._arms:
            raise ValueError(f"{self.name}: unknown arm {arm!r} (arms: {self._arms!r})")

    def _argmax(self, scores: dict[Arm, float]) -> Arm:
        """The arm with the highest score; ties are broken by the seeded generator."""
        best = max(scores.values())
        tied = [a for a in self._arms if scores[a] == best]
        if len(tied) == 1:
            return tied[0]
        return tied[int(self._rng.integers(len(tied)))]

    def _new_arm_stats(self, arm: Arm) -> dict[str, Any]:
        return {stat: 0.0 for stat in self._arm_stats}

    def _discount_stats(self, factor: float) -> None:
        """Fade every arm's statistics by ``factor`` (the discounted learners' forgetting; 1 = keep all)."""
        if factor < 1.0:
            for stat in self._arm_stats:
                values = getattr(self, stat)
                for a in self._arms:
                    values[a] *= factor

    def _forget_arm(self, arm: Arm) -> None:
        """Drop whatever else the subclass keeps about ``arm``."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` returned."""

    def _select(self) -> Arm:
        raise NotImplementedError

    def _update(self, arm: Arm, reward: float) -> None:
        raise NotImplementedError
