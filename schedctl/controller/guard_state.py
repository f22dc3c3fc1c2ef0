"""The guard's settings and memory: counters, the running and last good policies, refusals. Pure state.

The rules that read and advance it are the chain in ``guard.py``; the controller reports facts (``set_running``,
``record_tail``, ``note_fresh``) and the operator's pin. See ``guard.py`` for what each rule does with it.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schedctl.policies.spec import PolicySpec, parse_policy, policy_label

DEFAULT_POLICY = "klpm:4"  # the initial and the safe policy unless configured (one place)


class GuardParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    min_dwell_ticks: int = Field(default=4, ge=1, le=1_000_000,
                                 description="windows a policy runs before the learner may change it")
    settle_ticks: int = Field(default=0, ge=0, le=1_000_000,
                              description="first full windows after a change not credited")
    hysteresis_reward: float = Field(default=0.02, ge=0, le=1,
                                     description="mean-reward lead a proposal needs to switch")
    explore_min_samples: int = Field(default=1, ge=0, le=1_000_000,
                                     description="an arm with fewer rewards here may be explored")
    max_step_arms: int = Field(default=1, ge=1, le=1000, description="most arm positions moved in one tick")
    explore_when_slo_met: bool = Field(
        default=False, description="explore also when the window did not miss the SLO (or had too few samples to say)"
    )
    local_exploration: bool = Field(default=True, description="move only to the best arm or its neighbours")
    rollback_margin_fraction: float = Field(default=0.5, gt=0, le=1000, description="tail regression that counts")
    rollback_ticks: int = Field(default=2, ge=1, le=1_000_000,
                                description="regressed windows in a row that trigger a rollback")
    rollback_cooldown_ticks: int = Field(default=10, ge=0, le=1_000_000,
                                         description="ticks a rolled-back policy is not explored")
    baseline_min_windows: int = Field(
        default=2, ge=1, le=1000,
        description="windows the last good policy needs in this load context before a tail is "
        "compared with its baseline (one window may straddle the load change)"
    )
    stale_hold_ticks: int = Field(default=2, ge=0, le=1_000_000,
                                  description="stale ticks in a row that hold before the fallback")
    safe_policy: PolicySpec = Field(default_factory=lambda: parse_policy(DEFAULT_POLICY), description="fallback policy")

    @field_validator("safe_policy", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        return parse_policy(v) if isinstance(v, str) else v


class Guard:
    """The guard's memory: counters and the last good policy. The controller asks, the guard answers."""

    def __init__(self, params: GuardParams | dict[str, Any] | None = None) -> None:
        self.params = params if isinstance(params, GuardParams) else GuardParams.model_validate(params or {})
        self.pinned: PolicySpec | None = None
        self.stale_ticks = 0  # consecutive stale / unavailable ticks
        self.in_fallback = False
        self.learned: PolicySpec | None = None  # the policy chosen before the fallback
        self.running: PolicySpec | None = None  # the policy the engine runs (as far as we know)
        self.running_since_tick = 0  # tick whose decision put `running` in place
        self.last_good: PolicySpec | None = None
        self.baseline_tail_s: float | None = None  # the last good policy's recent tail
        self.baseline_context: str | None = None  # the load context that baseline was measured in
        self.baseline_windows = 0  # the windows that baseline is the median of
        self._tails: deque[float] = deque(maxlen=3)  # recent tails of the running policy
        self.regressed_ticks = 0
        self.blocked: dict[str, int] = {}  # policy label -> tick until which it is refused

    # -- facts the controller reports ------------------------------------------------------------------------------
    def windows_under_running(self, tick: int) -> int:
        """Full windows the running policy has had, counting this tick's."""
        return tick - self.running_since_tick

    def settled(self, tick: int) -> bool:
        return self.windows_under_running(tick) > self.params.settle_ticks

    def dwell_done(self, tick: int) -> bool:
        return self.windows_under_running(tick) >= self.params.min_dwell_ticks

    def set_running(self, spec: PolicySpec | None, tick: int) -> None:
        """The engine runs ``spec`` from the end of ``tick`` on (an apply succeeded, or the engine reports it)."""
        if spec == self.running:
            return
        self.running, self.running_since_tick = spec, tick
        self._tails.clear()
        self.regressed_ticks = 0

    def record_tail(self, tick: int, tail_s: float | None, context: str | None = None) -> None:
        """A fresh window's tail under the running policy (in load ``context``): the rollback test and baseline.

        A baseline is only comparable within one load context: when the context changes, the running policy
        becomes the reference of the new context and the comparison starts over.
        """
        if tail_s is None or self.running is None or self.windows_under_running(tick) < 1:
            return
        if context != self.baseline_context:
            self.baseline_context, self.baseline_tail_s, self.baseline_windows = context, None, 0
            self.last_good, self.regressed_ticks = self.running, 0
            self._tails.clear()
        self._tails.append(tail_s)
        p = self.params
        baseline = self.baseline_tail_s if self.baseline_windows >= p.baseline_min_windows else None
        if self.running != self.last_good and baseline is not None:
            if tail_s > baseline * (1.0 + p.rollback_margin_fraction):
                self.regressed_ticks += 1
            else:
                self.regressed_ticks = 0
        if self.running != self.last_good and self.dwell_done(tick) and self.regressed_ticks == 0:
            self.last_good = self.running  # survived its dwell: the new reference
        if self.running == self.last_good:
            self.baseline_tail_s = statistics.median(self._tails)
            self.baseline_windows = len(self._tails)

    def trust(self, spec: PolicySpec) -> None:
        """A change that is not an exploration (to the best-known arm, the initial policy, a restore): the new
        policy is the reference from now on, measured afresh. Only explorations are ever rolled back — a tail that
        rises after a move toward the best-known arm is the load rising, not that arm failing."""
        self.last_good, self.baseline_tail_s, self.regressed_ticks, self.baseline_windows = spec, None, 0, 0
        self._tails.clear()

    def rollback_due(self) -> bool:
        return (
            self.last_good is not None and self.running != self.last_good
            and self.regressed_ticks >= self.params.rollback_ticks
        )

    def block(self, spec: PolicySpec, tick: int) -> None:
        self.blocked[policy_label(spec)] = tick + self.params.rollback_cooldown_ticks

    def is_blocked(self, spec: PolicySpec, tick: int) -> bool:
        """Whether ``spec`` is still refused for exploration at ``tick`` (asking changes nothing)."""
        until = self.blocked.get(policy_label(spec))
        return until is not None and tick < until

    def expire(self, tick: int) -> None:
        """Forget the refusals that ended by ``tick`` (once per tick, before the rules run)."""
        for label in [k for k, until in self.blocked.items() if tick >= until]:
            del self.blocked[label]

    # -- operator controls --------------------------------------------------------------------------------------
    def pin(self, spec: PolicySpec) -> None:
        self.pinned = spec

    def unpin(self) -> None:
        self.pinned = None

    # -- fallback -------------------------------------------------------------------------------------------------
    def enter_fallback(self, learned: PolicySpec) -> None:
        """Remember the policy chosen before the fallback (once per outage)."""
        if not self.in_fallback:
            self.learned, self.in_fallback = learned, True

    def leave_fallback(self) -> PolicySpec | None:
        self.in_fallback = False
        return self.learned

    # -- freshness --------------------------------------------------------------------------------------------------
    def note_fresh(self, fresh: bool) -> None:
        self.stale_ticks = 0 if fresh else self.stale_ticks + 1

    def should_fall_back(self) -> bool:
        return self.stale_ticks > self.params.stale_hold_ticks

    def summary(self, tick: int) -> dict[str, Any]:
        return {
            "running": policy_label(self.running) if self.running is not None else None,
            "windows_under_running": self.windows_under_running(tick),
            "last_good": policy_label(self.last_good) if self.last_good is not None else None,
            "baseline_tail_s": self.baseline_tail_s,
            "regressed_ticks": self.regressed_ticks,
            "stale_ticks": self.stale_ticks,
            "in_fallback": self.in_fallback,
            "pinned": policy_label(self.pinned) if self.pinned is not None else None,
            "blocked": sorted(self.blocked),
        }
