"""KTuner: a learner from ``schedctl.bandits`` over the configured queue-policy arms, with the load as context.

Arms (``policies/arms.py``) are k values of k-LPM (``1`` is FCFS, ``"inf"`` is LPM) and, mixed in, other queue
policies by label (``"hrrn"``, ``"spf"``, ``"lpm-aging:64"``, ``"sglang:lpm"``). Each arm sits on an axis
(:func:`arm_axis`): the k axis (fcfs, klpm:K, lpm, by k), the lpm-aging axis (by N), and one axis per other
policy. Within an axis arms are listed in increasing order: that order is what lets the guard move at most one
arm per tick. Mixed families (decided here, tested in tests/test_guard.py): steps are counted along an axis, and
a switch between axes counts as ONE step — the families are not ordered against each other (is hrrn "between"
klpm:4 and lpm?), so no rule may claim a nearer or farther arm across them; the step limit, locality and the
what-if "neighbours" all use :func:`arm_steps`. The learner is any factory name:

* ``contextual`` (default): one discrete learner per load bucket (``LoadBucketer`` over the window's backlog —
  :func:`backlog_s`, the queue in seconds of the engine's own service rate — and prefix-cache hit rate, with
  hysteresis; arrival-rate and queue-length thresholds may be set too); the per-bucket learner is ``ucb1``
  (exploration 0.3) unless ``learner_params`` says otherwise (``DEFAULT_LEARNER_PARAMS``);
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
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schedctl.bandits import Arm, Bandit, LoadFeatures, make_bandit
from schedctl.bandits.context import ContextualBandit
from schedctl.engine_adapter.base import Observation
from schedctl.policies.arms import ArmValue, arm_axis, arm_of, check_arm, spec_for
from schedctl.policies.spec import KLPMSpec, PolicySpec, queue_family

ProposalKind = Literal["explore", "exploit"]

# The default learner: UCB1 per load bucket. Buckets by backlog (BACKLOG_THRESHOLDS_S) and prefix-cache hit rate.
# Request-rate thresholds (the former default, [6, 24] req/s) fit one workload: on Mooncake's 15k-token prompts
# 1.3 req/s is past an H100's saturation yet was "light", so what FCFS earned in quiet spells was exploited
# through a queue of hundreds. The backlog is in seconds whatever the prompts are.
BACKLOG_THRESHOLDS_S: list[float] = [10.0]
"""One backlog boundary for the default 2 s TTFT target: from 10 s (5x the target) every queued request misses the
SLO and the engine is overloaded (load1); below it the queue comes and goes (load0). Measured on `schedctl bench
adaptive` (3 seeds): one boundary at 10 s beat two at [1, 10] s or [2, 20] s on load-step, diurnal and
workload-switch (the queue at the end of a window is noisy: more levels split the evidence and restart the
learner from the initial policy at every crossing) and matched them on ramp and the Mooncake trace."""
DEFAULT_LEARNER_PARAMS: dict[str, Any] = {
    "learner": "ucb1",
    "learner_params": {"exploration": 0.3},
    "bucketer": {"rate_thresholds_rps": [], "queue_thresholds": [], "backlog_thresholds_s": BACKLOG_THRESHOLDS_S,
                 "share_thresholds": [0.6]},
}


def backlog_s(obs: Observation) -> float:
    """The waiting queue in seconds of the engine's own service: ``queue_len`` over the requests it admitted (gave a
    first token) per second in the window — by Little's law, about the wait of a request arriving now, on any
    workload. A window that admitted none counts as one admission (a lower bound: the queue took longer)."""
    if obs.queue_len <= 0 or obs.duration_s <= 0:
        return 0.0
    admitted = obs.ttft.count
    admitted = admitted if math.isfinite(admitted) else 0.0
    return obs.queue_len * obs.duration_s / max(admitted, 1.0)


def arm_steps(a: ArmValue, b: ArmValue, arms: Sequence[ArmValue]) -> int:
    """Steps from arm ``a`` to arm ``b``: positions along their axis (among ``arms``), 1 across axes, 0 if equal."""
    if a == b:
        return 0
    (fa, _), (fb, _) = arm_axis(a), arm_axis(b)
    if fa != fb or a not in arms or b not in arms:
        return 1
    axis = [x for x in arms if arm_axis(x)[0] == fa]
    return abs(axis.index(a) - axis.index(b))


class KTunerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    arms: list[ArmValue] = Field(default=[1, 2, 4, 8, "inf"], description=(
        'queue policies: k values (1 = FCFS, "inf" = LPM) or labels ("klpm:4", "hrrn", "spf", "lpm-aging:64", '
        '"sglang:lpm"); within a family in increasing order of k (or N)'))
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
            return [check_arm(a) for a in v]  # "INF", "4", "klpm:4", "lpm" -> "inf", 4, 4, "inf"; "HRRN" -> "hrrn"
        return v

    @field_validator("arms")
    @classmethod
    def _check_arms(cls, v: list[ArmValue]) -> list[ArmValue]:
        if len(v) < 2:
            raise ValueError("give at least two arms")
        if len(set(v)) != len(v):
            raise ValueError("arms must be distinct")
        for family in dict.fromkeys(arm_axis(a)[0] for a in v):
            axis = [a for a in v if arm_axis(a)[0] == family]
            if sorted(axis, key=lambda a: arm_axis(a)[1]) != axis:
                what = 'k ("inf" last)' if family == "klpm" else "N"
                raise ValueError(f"{family} arms must be in increasing order of {what}, got {axis}")
        return v


def arm_of_policy(spec: PolicySpec | None) -> ArmValue | None:
    """The arm a queue-ordering spec is (None for the token-budget family, which the KTuner does not tune)."""
    return arm_of(spec) if isinstance(spec, KLPMSpec) else None


def arm_label(arm: Arm) -> str:
    """The policy label of an arm (``1`` -> ``fcfs``, ``"inf"`` -> ``lpm``, ``4`` -> ``klpm:4``, labels as they are)."""
    if isinstance(arm, int):
        return "fcfs" if arm == 1 else f"klpm:{arm}"
    return "lpm" if arm == "inf" else str(arm)


def arm_family(arm: Arm) -> str:
    """The family of an arm (``klpm``, ``lpm-aging``, ``hrrn``, ``spf``, ``sglang``): what the decision log shows."""
    return queue_family(spec_for(arm))  # type: ignore[arg-type]  # bandits' Arm is any hashable


class Proposal(BaseModel):
    model_config = ConfigDict(frozen=True)

    arm: ArmValue
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
        self.arms: tuple[ArmValue, ...] = tuple(p.arms)
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
            arrival_rate_rps=max(0.0, obs.arrival_rate_rps), queue_len=obs.queue_len, backlog_s=backlog_s(obs),
            prefix_share=obs.cache_hit_rate,
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
        k: ArmValue = arm  # type: ignore[assignment]
        best = self.best_arm(label, prefer=k)
        return Proposal(arm=k, kind="exploit" if best == k else "explore", context=label)

    def update(self, arm: ArmValue, reward: float, obs: Observation) -> str:
        """Credit ``reward`` to ``arm`` in the context of ``obs``; returns the context label credited."""
        label = self.context_label(obs)
        self.learner.update(arm, reward, self.context(obs))
        s = self.stats.setdefault(label, {}).setdefault(arm_label(arm), ArmStats())
        s.count += 1
        s.mean += (reward - s.mean) * max(1.0 / s.count, self.params.estimate_weight)
        return label

    # -- what decisions and the guard read ----------------------------------------------------------------------
    def estimate(self, label: str, arm: ArmValue) -> ArmStats | None:
        s = self.stats.get(label, {}).get(arm_label(arm))
        return s if s is not None and s.count > 0 else None

    def best_arm(self, label: str, prefer: ArmValue | None = None) -> ArmValue | None:
        """The arm with the highest mean reward in this context (None before any reward there).

        Ties go to ``prefer`` (the running arm: no move without evidence), then to the arm listed first.
        """
        known = [(round(s.mean, 9), a == prefer, -i, a) for i, a in enumerate(self.arms)
                 if (s := self.estimate(label, a)) is not None]
        return max(known)[3] if known else None

    def summary(self, label: str) -> dict[str, dict[str, float]]:
        """{arm label: {"n": count, "mean": mean}} for one context."""
        return {a: {"n": s.count, "mean": round(s.mean, 4)} for a, s in self.stats.get(label, {}).items()}

    def index(self, k: ArmValue) -> int | None:
        return self.arms.index(k) if k in self.arms else None

    def neighbour_toward(self, current: ArmValue | None, target: ArmValue, steps: int = 1) -> ArmValue:
        """At most ``steps`` arms from ``current`` toward ``target`` along their axis; ``target`` itself when it is
        that near, when current is not an arm, or when it is on another axis (a switch across families is one
        step: see the module docstring)."""
        if current is None or current not in self.arms or arm_steps(current, target, self.arms) <= steps:
            return target
        axis = [a for a in self.arms if arm_axis(a)[0] == arm_axis(target)[0]]
        i, j = axis.index(current), axis.index(target)
        return axis[i + (steps if j > i else -steps)]
