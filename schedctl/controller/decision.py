"""The Decision record: one per controller tick, what the decision log, the API and ``schedctl decisions`` show.

A decision says which tick it is (``tick_id``, and ``decision_id`` = ``RUN:TICK``, unique across restarts because
the run id is), what the window looked like (``window``), what the objective and the learner made of it
(``learner``), the policy chosen and the reason:

* ``explore`` / ``exploit`` — the learner's proposal (exploit: the arm with the best mean reward in this context);
* ``guard`` — held or limited by the guard (dwell, hysteresis, one step, stale data held, a refused policy,
  the learned policy restored after a fallback); ``detail`` says which;
* ``rollback`` — back to the last good policy after a tail regression;
* ``fallback`` — the safe policy while observations are stale or the engine unreachable;
* ``pinned`` — the operator's pinned policy.

``whatif`` (only with the replay on) says which arms the replay scored, how, and what it changed (whatif.py).

``reserve`` (only with ``[reserve]`` on) is SGLang's ``schedule_conservativeness`` chosen beside the policy: the
value, the rule that chose it, the window's retractions, and its own push, readback and error
(``reserve_tuner.py``).

``applied`` is filled in by the shell after it pushed the policy (always False in advisory mode).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from schedctl.controller.reserve_tuner import ReserveRecord
from schedctl.controller.whatif import WhatIfRecord
from schedctl.policies.spec import PolicySpec, policy_family

Reason = Literal["explore", "exploit", "guard", "rollback", "fallback", "pinned"]
Mode = Literal["advisory", "active"]
REASONS: tuple[Reason, ...] = ("explore", "exploit", "guard", "rollback", "fallback", "pinned")


class WindowSummary(BaseModel):
    """The observation window, reduced to what an operator reads (seconds; None where unknown)."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    start_s: float
    end_s: float
    arrivals: int
    completions: int
    arrival_rate_rps: float
    queue_len: int
    running: int
    cache_hit_rate: float | None = None
    kv_utilization: float | None = None
    ttft_samples: float = 0.0
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    attainment: float | None = None
    tail_s: float | None = None
    oldest_wait_s: float | None = None
    tbt_p99_s: float | None = None
    active_policy: str | None = None
    stale: bool = False
    stale_reason: str | None = None


class LearnerSummary(BaseModel):
    """What the objective and the learner did this tick."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    learner: str
    context: str | None = None  # load bucket of this window
    reward: float | None = None
    why_no_reward: str | None = None
    credited: str | None = None  # the arm the reward went to
    pooled_windows: int | None = None  # the reward is of this many thin windows merged (controller/pooling.py)
    proposal: str | None = None  # the arm the learner proposed (None when it was not asked)
    arms: dict[str, dict[str, float]] = Field(default_factory=dict)  # this context: arm -> {"n", "mean"}


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    tick_id: int = Field(ge=1)
    decision_id: str
    time_s: float  # end of the window, on the engine's clock
    window: WindowSummary
    learner: LearnerSummary
    previous: PolicySpec | None = None
    policy: PolicySpec
    policy_label: str
    changed: bool
    reason: Reason
    rule: str = ""  # the guard rule that acted (guard.py): pin, stale, restore, dwell, ..., step_limit
    detail: str = ""
    mode: Mode
    push: bool = False  # the shell must push ``policy`` to the engine (active mode only)
    # why the engine must be told (or why a due push waits): reconcile.py; None when the engine runs ``policy``
    reconcile: str | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)  # failed pushes: kind, policy, retry tick
    applied: bool = False
    apply_error: str | None = None
    guard: dict[str, Any] = Field(default_factory=dict)
    deadline: dict[str, Any] | None = None  # DeadlineTuner (SLAI): knob, error, window P99 TBT
    whatif: WhatIfRecord | None = None  # the what-if replay of this tick (None: replay off or not this tick)
    reserve: ReserveRecord | None = None  # the conservativeness tuner (reserve_tuner.py; None: [reserve] off)

    @computed_field  # type: ignore[prop-decorator]  # in the log's JSON; recomputed (not read) when a log is loaded
    @property
    def policy_family(self) -> str:
        """The chosen policy's family (``klpm``, ``hrrn``, ``spf``, ``lpm-aging``, ``sglang``, ``slai``, ...)."""
        return policy_family(self.policy)
