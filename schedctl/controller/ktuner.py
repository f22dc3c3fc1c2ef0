"""KTuner: a learner from ``schedctl.bandits`` over the configured k arms of k-LPM, with the load as context.

Arms are k values in increasing order (``1`` is FCFS, ``"inf"`` is LPM): the order is what lets the guard move
at most one arm per tick. The learner is any factory name:

* ``contextual`` (default): one discrete learner per load bucket (``LoadBucketer`` over the window's arrival
  rate and prefix-cache hit rate, with hysteresis); the per-bucket learner is ``ucb1`` (exploration 0.3) unless
  ``learner_params`` says otherwise (``DEFAULT_LEARNER_PARAMS``);
* ``linucb``: one linear model per arm over ``[rate / rate_scale_rps, queue / queue_scale, hit rate]``;
* any context-free learner (``ucb1``, ``discounted_thompson_beta``, ...).

Beside the learner the tuner keeps, per context label and arm, the count and a running mean of the rewards it
was given (the plain mean until ``1/estimate_weight`` rewards, then an exponential average that follows drift):
that is what decisions report, what tells an exploit (the arm with the best mean in this context) from an
explore, and what the guard's hysteresis compares. Rewards are in [0, 1] (``objective.py``), which every learner
accepts.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schedctl.bandits import Arm, Bandit, LoadFeatures, make_bandit
from schedctl.bandits.context import ContextualBandit
from schedctl.engine_adapter.base import Observation
from schedctl.policies.spec import KValue, PolicySpec, check_k, queue_k

ProposalKind = Literal["explore", "exploit"]

# The default learner: UCB1 per load bucket. Buckets by arrival rate (set the thresholds to your traffic's light
# and heavy rates) and prefix-cache hit rate; the queue-length thresholds are set out of reach because the queue
# depends on the very policy being judged (a bad arm's backlog would move its own rewards to another bucket).
DEFAULT_LEARNER_PARAMS: dict[str, Any] = {
    "learner": "ucb1",
    "learner_params": {"exploration": 0.3},
    "bucketer": {"rate_thresholds_rps": [6.0, 24.0], "queue_thresholds": [1e6, 1e7], "share_thresholds": [0.6]},
}


def _k_sort_key(k: KValue) -> float:
    return math.inf if k == "inf" else float(k)


class KTunerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    arms: list[KValue] = Field(default=[1, 2, 4, 8, "inf"], description='k values, increasing; 1 = FCFS, "inf" = LPM')
    learner: str = Field(default="contextual", description="factory name of the learner (schedctl.bandits)")
    learner_params: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_LEARNER_PARAMS), description="the learner's parameters (checked by it)"
    )
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    rate_scale_rps: float = Field(default=10.0, gt=0, le=1e9, description="linucb: arrival rate that maps to 1.0")
    queue_scale: float = Field(default=64.0, gt=0, le=1e9, description="linucb: queue length that maps to 1.0")
    estimate_weight: float = Field(
        default=0.25, gt=0, le=1, description="weight of a new reward in an arm's running mean (1/n until then)"
    )

    @field_validator("arms", mode="before")
    @classmethod
    def _parse_arms(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [check_k(a) for a in v]  # "INF", "4" -> "inf", 4 (same rule and bound as PolicySpec)
        return v

    @field_validator("arms")
    @classmethod
    def _check_arms(cls, v: list[KValue]) -> list[KValue]:
        if len(v) < 2:
            raise ValueError("give at least two arms")
        if len(set(v)) != len(v):
            raise ValueError("arms must be distinct")
        if sorted(v, key=_k_sort_key) != v:
            raise ValueError('arms must be in increasing order of k ("inf" last)')
        return v


def k_of(spec: PolicySpec | None) -> KValue | None:
    """The k a queue-ordering spec runs with (None for specs that are not k-LPM orders)."""
    if spec is None:
        return None
    try:
        k = queue_k(spec)
    except TypeError:
        return None
    return "inf" if k is None else k


def arm_label(k: Arm) -> str:
    return "fcfs" if k == 1 else ("lpm" if k == "inf" else f"klpm:{k}")


class Proposal(BaseModel):
    model_config = ConfigDict(frozen=True)

    arm: KValue
    kind: ProposalKind
    context: str


class ArmStats(BaseModel):
    count: int = 0
    mean: float = 0.0


class KTuner:
    """select(observation) -> Proposal; update(arm, reward, observation). No clock, no I/O."""

    def __init__(self, params: KTunerParams | dict[str, Any] | None = None) -> None:
        self.params = params if isinstance(params, KTunerParams) else KTunerParams.model_validate(params or {})
        p = self.params
        self.arms: tuple[KValue, ...] = tuple(p.arms)
        learner_params = dict(p.learner_params)
        if p.learner == "linucb":
            learner_params.setdefault("n_features", 3)
        self.learner: Bandit = make_bandit(p.learner, self.arms, p.seed, **learner_params)
        self.rebind()
        self.stats: dict[str, dict[str, ArmStats]] = {}  # context label -> arm label -> stats

    def rebind(self) -> None:
        """Take the learner's context bucketer (after the learner was built, or replaced by a restored one)."""
        self._bucketer = self.learner.bucketer if isinstance(self.learner, ContextualBandit) else None

    # -- context ----------------------------------------------------------------------------------------------
    def _features(self, obs: Observation) -> LoadFeatures:
        return LoadFeatures(
            arrival_rate_rps=max(0.0, obs.arrival_rate_rps), queue_len=obs.queue_len, prefix_share=obs.cache_hit_rate
        )

    def context(self, obs: Observation) -> Any:
        """What the learner takes as context for this window."""
        if self._bucketer is not None:
            return self._features(obs)
        if self.params.learner == "linucb":
            return [obs.arrival_rate_rps / self.params.rate_scale_rps, obs.queue_len / self.params.queue_scale,
                    obs.cache_hit_rate or 0.0]
        return None

    def context_label(self, obs: Observation, move: bool = False) -> str:
        """The bucket a window falls in ("all" for learners without buckets); ``move`` advances the bucketer."""
        if self._bucketer is not None:
            b = self._bucketer
            return b.observe(self._features(obs)) if move else b.peek(self._features(obs))
        return "all"

    # -- the loop -----------------------------------------------------------------------------------------------
    def select(self, obs: Observation) -> Proposal:
        arm = self.learner.select(self.context(obs))
        # a contextual learner's select moved its bucketer: that bucket is this window's context
        label = (self._bucketer.current or "all") if self._bucketer is not None else "all"
        k: KValue = arm  # type: ignore[assignment]
        best = self.best_arm(label, prefer=k)
        return Proposal(arm=k, kind="exploit" if best == k else "explore", context=label)

    def update(self, arm: KValue, reward: float, obs: Observation) -> str:
        """Credit ``reward`` to ``arm`` in the context of ``obs``; returns the context label credited."""
        label = self.context_label(obs)
        self.learner.update(arm, reward, self.context(obs))
        s = self.stats.setdefault(label, {}).setdefault(arm_label(arm), ArmStats())
        s.count += 1
        s.mean += (reward - s.mean) * max(1.0 / s.count, self.params.estimate_weight)
        return label

    # -- what decisions and the guard read ----------------------------------------------------------------------
    def estimate(self, label: str, arm: KValue) -> ArmStats | None:
        s = self.stats.get(label, {}).get(arm_label(arm))
        return s if s is not None and s.count > 0 else None

    def best_arm(self, label: str, prefer: KValue | None = None) -> KValue | None:
        """The arm with the highest mean reward in this context (None before any reward there).

        Ties go to ``prefer`` (the running arm: no move without evidence), then to the lower k.
        """
        known = [(round(s.mean, 9), a == prefer, -i, a) for i, a in enumerate(self.arms)
                 if (s := self.estimate(label, a)) is not None]
        return max(known)[3] if known else None

    def summary(self, label: str) -> dict[str, dict[str, float]]:
        """{arm label: {"n": count, "mean": mean}} for one context."""
        return {a: {"n": s.count, "mean": round(s.mean, 4)} for a, s in self.stats.get(label, {}).items()}

    def index(self, k: KValue) -> int | None:
        return self.arms.index(k) if k in self.arms else None

    def neighbour_toward(self, current: KValue | None, target: KValue, steps: int = 1) -> KValue:
        """At most ``steps`` arms from ``current`` toward ``target`` (``target`` when current is not an arm)."""
        i, j = (None if current is None else self.index(current)), self.arms.index(target)
        if i is None or abs(j - i) <= steps:
            return target
        return self.arms[i + (steps if j > i else -steps)]
