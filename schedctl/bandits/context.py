"""Load regimes: a bucketer that names the load level of a window, and one discrete learner per regime.

The best k of k-LPM depends on the load (FCFS at low load, LPM at high load, k = 2..4 between) and on how much
the prompts share. ``LoadBucketer`` turns three features of a window into a bucket label such as
``"load1-share0"``:

- load level: the highest of the arrival-rate level, the queue-length level and the backlog level (the queue in
  seconds of the engine's own recent service rate, ``LoadFeatures.backlog_s``). With thresholds ``[t1, t2]`` a
  feature is at level 0 below t1, 1 from t1, 2 from t2; a feature whose threshold list is empty is ignored.
  Request rates mean different loads for different prompts (1.3 req/s of 15k-token prompts saturates an H100
  that serves 34 req/s of tree prompts unqueued); the backlog is the wait a new arrival sees, in the units of
  the SLO, on any workload.
- share level: the same on the prefix-share fraction (e.g. the prefix-cache hit rate), when thresholds are given.

Hysteresis keeps a bucket from flapping when a feature hovers at a threshold: a level rises past threshold t
only when the feature reaches ``t * (1 + hysteresis_fraction)`` and falls back only below
``t * (1 - hysteresis_fraction)``. That memory (the current level of each feature) is the bucketer's state.

``ContextualBandit`` keeps one learner (any discrete one from the factory) per bucket, created on first use
with a seed drawn from its own generator. ``select(features)`` moves the bucketer and asks that bucket's
learner; ``update(arm, reward)`` credits the bucket of the last ``select``, and ``update(arm, reward, features)``
the bucket those features fall in now (without moving the bucketer).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schedctl.bandits.base import (
    STATE_VERSION,
    Arm,
    Bandit,
    BanditConfigError,
    LearnerParams,
    Seed,
    decode_arm,
    make_rng,
    normalize_arm,
    rng_from_state,
    state_header,
    validate_params,
)
from schedctl.bandits.factory import bandit_from_state, make_bandit, params_model


class LoadFeatures(BaseModel):
    """What the bucketer reads from one observation window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arrival_rate_rps: float = Field(ge=0)
    queue_len: float = Field(ge=0, description="waiting requests at the end of the window")
    backlog_s: float | None = Field(
        default=None, ge=0, allow_inf_nan=False,
        description="the waiting queue in seconds of the engine's service: queue_len / requests admitted per s",
    )
    prefix_share: float | None = Field(default=None, ge=0, le=1, description="e.g. prefix-cache hit rate")


class BucketerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_thresholds_rps: list[float] = Field(default=[4.0, 16.0], description="arrival-rate level boundaries")
    queue_thresholds: list[float] = Field(default=[8.0, 64.0], description="queue-length level boundaries")
    backlog_thresholds_s: list[float] = Field(
        default=[], description="backlog level boundaries (seconds of service queued); [] = ignore"
    )
    share_thresholds: list[float] = Field(default=[0.5], description="prefix-share boundaries; [] = ignore")
    hysteresis_fraction: float = Field(default=0.1, ge=0, lt=1)

    @field_validator("rate_thresholds_rps", "queue_thresholds", "backlog_thresholds_s", "share_thresholds")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(t <= 0 for t in v):
            raise ValueError("thresholds must be positive")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError("thresholds must increase")
        return v

    @model_validator(mode="after")
    def _same_levels(self) -> BucketerParams:
        given = {name: len(v) for name, v in self.load_thresholds().items() if v}
        if not given:
            raise ValueError("give at least one of rate_thresholds_rps, queue_thresholds, backlog_thresholds_s")
        if len(set(given.values())) > 1:
            raise ValueError(f"{', '.join(given)} must have the same length (same load levels)")
        return self

    def load_thresholds(self) -> dict[str, list[float]]:
        """The load features' thresholds by feature name (an empty list: the feature is ignored)."""
        return {"rate": self.rate_thresholds_rps, "queue": self.queue_thresholds, "backlog": self.backlog_thresholds_s}

    @property
    def load_levels(self) -> int:
        return 1 + max(len(v) for v in self.load_thresholds().values())


def _level(value: float, thresholds: list[float], current: int | None, hysteresis: float) -> int:
    """The level of ``value``; from ``current`` it moves only past a threshold widened by ``hysteresis``."""
    if current is None:
        return sum(1 for t in thresholds if value >= t)
    level = current
    while level < len(thresholds) and value >= thresholds[level] * (1.0 + hysteresis):
        level += 1
    while level > 0 and value < thresholds[level - 1] * (1.0 - hysteresis):
        level -= 1
    return level


_LEVELS = ("rate", "queue", "backlog", "share")


class LoadBucketer:
    """Thresholds with hysteresis on arrival rate, queue length, backlog and prefix share -> a bucket label."""

    def __init__(self, params: BucketerParams | Mapping[str, Any] | None = None) -> None:
        self.params = validate_params(BucketerParams, "bucketer", {} if params is None else params)
        self.levels: dict[str, int | None] = dict.fromkeys(_LEVELS)
        self.observed = False  # whether a window was observed (``current`` is None before)

    def _kept(self, name: str, value: float | None, thresholds: list[float]) -> int | None:
        """The level of one feature: None when ignored; the last level when not measured this window."""
        if not thresholds:
            return None
        if value is None:
            return self.levels[name]
        return _level(value, thresholds, self.levels[name], self.params.hysteresis_fraction)

    def _levels(self, f: LoadFeatures) -> dict[str, int | None]:
        p = self.params
        values = {"rate": f.arrival_rate_rps, "queue": f.queue_len, "backlog": f.backlog_s}
        levels = {name: self._kept(name, values[name], t) for name, t in p.load_thresholds().items()}
        levels["share"] = self._kept("share", f.prefix_share, p.share_thresholds)
        return levels

    @staticmethod
    def _label(levels: Mapping[str, int | None]) -> str:
        load = max(levels.get(name) or 0 for name in ("rate", "queue", "backlog"))
        share = levels.get("share")
        return f"load{load}" if share is None else f"load{load}-share{share}"

    def observe(self, features: LoadFeatures | Mapping[str, Any]) -> str:
        """The bucket of this window; moves the hysteresis state."""
        self.levels = self._levels(_as_features(features))
        self.observed = True
        return self._label(self.levels)

    def peek(self, features: LoadFeatures | Mapping[str, Any]) -> str:
        """The bucket these features would fall in now, without moving the state."""
        return self._label(self._levels(_as_features(features)))

    @property
    def current(self) -> str | None:
        """The bucket of the last observed window (None before the first)."""
        return self._label(self.levels) if self.observed else None

    def labels(self) -> list[str]:
        """Every bucket label this bucketer can produce."""
        loads = range(self.params.load_levels)
        if not self.params.share_thresholds:
            return [f"load{n}" for n in loads]
        return [f"load{n}-share{s}" for n in loads for s in range(len(self.params.share_thresholds) + 1)]

    def state(self) -> dict[str, Any]:
        return {"params": self.params.model_dump(mode="json"), "levels": dict(self.levels), "observed": self.observed}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        bucketer = cls(state["params"])
        levels = state["levels"]
        bucketer.levels.update({k: (None if v is None else int(v)) for k, v in levels.items() if k in _LEVELS})
        # a state saved before "observed" was kept: the rate level was set from the first window on
        bucketer.observed = bool(state.get("observed", levels.get("rate") is not None))
        return bucketer


def _as_features(features: LoadFeatures | Mapping[str, Any]) -> LoadFeatures:
    if isinstance(features, LoadFeatures):
        return features
    if features is None:
        raise ValueError("contextual: needs load features (arrival_rate_rps, queue_len, backlog_s, prefix_share)")
    return LoadFeatures.model_validate(features)


class ContextualParams(LearnerParams):
    learner: str = Field(
        default="discounted_thompson_beta", description="factory name of the learner in each bucket (rewards in [0, 1])"
    )
    learner_params: dict[str, Any] = Field(default_factory=dict)
    bucketer: BucketerParams = Field(default_factory=BucketerParams)


class ContextualBandit:
    """One discrete learner per load bucket; satisfies the :class:`~schedctl.bandits.base.Bandit` protocol."""

    name = "contextual"

    def __init__(self, arms: Iterable[Arm], seed: Seed, params: ContextualParams | Mapping[str, Any] | None = None):
        self.params = validate_params(ContextualParams, self.name, {} if params is None else params)
        if self.params.learner in ("contextual", "linucb"):
            raise BanditConfigError(self.name, "learner", "must be a discrete, context-free learner")
        # Refuse bad learner parameters now, not at the first new bucket.
        validate_params(params_model(self.params.learner), self.params.learner, self.params.learner_params)
        self._rng = make_rng(seed)
        self._arms: list[Arm] = []
        for arm in arms:
            arm = normalize_arm(arm)
            if arm in self._arms:
                raise ValueError(f"{self.name}: arm {arm!r} is already present")
            self._arms.append(arm)
        self.bucketer = LoadBucketer(self.params.bucketer)
        self.learners: dict[str, Bandit] = {}
        self.last_bucket: str | None = None

    @property
    def arms(self) -> tuple[Arm, ...]:
        return tuple(self._arms)

    def learner(self, bucket: str) -> Bandit:
        """The learner of ``bucket``, created (with a seed from this bandit's generator) on first use."""
        if bucket not in self.learners:
            seed = int(self._rng.integers(2**63))
            self.learners[bucket] = make_bandit(self.params.learner, self._arms, seed, **self.params.learner_params)
        return self.learners[bucket]

    def select(self, context: Any = None) -> Arm:
        self.last_bucket = self.bucketer.observe(context)
        return self.learner(self.last_bucket).select()

    def update(self, arm: Arm, reward: float, context: Any = None) -> None:
        if context is not None:
            bucket = self.bucketer.peek(context)
        elif self.last_bucket is not None:
            bucket = self.last_bucket
        else:
            raise ValueError(f"{self.name}: update before any select needs the window's load features")
        self.learner(bucket).update(arm, reward)

    def add_arm(self, arm: Arm) -> None:
        arm = normalize_arm(arm)
        if arm in self._arms:
            raise ValueError(f"{self.name}: arm {arm!r} is already present")
        self._arms.append(arm)
        for learner in self.learners.values():
            learner.add_arm(arm)

    def remove_arm(self, arm: Arm) -> None:
        if arm not in self._arms:
            raise ValueError(f"{self.name}: unknown arm {arm!r} (arms: {self._arms!r})")
        self._arms.remove(arm)
        for learner in self.learners.values():
            learner.remove_arm(arm)

    def state(self) -> dict[str, Any]:
        return {
            **state_header(self.name, self.params, self._arms, self._rng),
            "bucketer": self.bucketer.state(),
            "last_bucket": self.last_bucket,
            "learners": {bucket: learner.state() for bucket, learner in self.learners.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("algorithm") != cls.name or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} contextual state: {state.get('algorithm')!r}")
        bandit = cls([decode_arm(a) for a in state["arms"]], 0, state["params"])
        bandit._rng = rng_from_state(state["rng"])
        bandit.bucketer = LoadBucketer.from_state(state["bucketer"])
        bandit.last_bucket = state["last_bucket"]
        bandit.learners = {bucket: bandit_from_state(s) for bucket, s in state["learners"].items()}
        return bandit
