"""Controller.step(observation) -> Decision: the whole decision logic, with no I/O and no clock of its own.

Time arrives in each Observation (``start_s``/``end_s``, on the engine's clock, simulated or wall). The shell
(``service.py``) calls, once per tick::

    decision = controller.step(observation)          # or controller.step(unavailable(...)) when observe() failed
    if decision.push:                                # active mode, and the engine must be told
        ...adapter.apply(decision.policy)...
        decision = controller.record_apply(decision, ok, error)

Two tuning modes, chosen by the family of the initial policy:

* k mode (fcfs / klpm / lpm): the KTuner's learner proposes an arm, the guard limits the change;
* deadline mode (slai): the DeadlineTuner moves SLAI's Θ (or its TBT slack) to hold P99 TBT at its target;
  the engine never switches family while requests are in flight, so the two modes never mix in one run.

With the what-if replay on (``[whatif]``, off by default) the shell also passes ``step`` the counterfactual
windows of this window's arms (``whatif.py``): a prior for the KTuner or a filter on its explorations.

Each tick: the observation passes the sanity gate (``sanity.py``: implausible values make it stale), the
learner is credited, the guard's chain of rules chooses the policy (``guard.py``: pin, stale/fallback, restore,
rollback, dwell, idle, learner, locality, explore filter, hysteresis, step limit; ``Decision.rule`` names the
one that acted), and the reconciler compares it with what the engine reports it runs (``reconcile.py``):
``push`` is set, with the why in ``Decision.reconcile``, whenever they differ — a restart, a lost policy, a
failed push — and never toward an engine that did not answer this tick.

With ``[reserve]`` on, the ReserveTuner (``reserve_tuner.py``) then chooses SGLang's ``schedule_conservativeness``
from the same window (its retractions, queue and KV use), after the guard, and sees the guard's fallback and pin;
its choice and push are ``Decision.reserve`` (the shell reports the push with ``record_reserve_apply``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schedctl.controller.deadline import DeadlineTuner, DeadlineTunerParams
from schedctl.controller.decision import Decision, LearnerSummary, Mode, Reason, WindowSummary
from schedctl.controller.guard import Guard, GuardParams, Tick, run_chain
from schedctl.controller.guard_state import DEFAULT_POLICY
from schedctl.controller.ktuner import KTuner, KTunerParams, arm_label, arm_of_policy
from schedctl.controller.objective import ObjectiveParams, Score, evaluate
from schedctl.controller.pooling import WindowPool
from schedctl.controller.reconcile import ReconcileParams, Reconciler
from schedctl.controller.reserve_tuner import ReserveParams, ReserveTuner
from schedctl.controller.sanity import SanityParams, gate
from schedctl.controller.whatif import WhatIf, WhatIfParams, WhatIfRecord
from schedctl.engine_adapter.base import Observation, ReplayReport
from schedctl.policies.arms import ArmValue
from schedctl.policies.slai import with_tbt_slack, with_theta
from schedctl.policies.spec import PolicySpec, SLAISpec, parse_policy, policy_label


class DeadlineParams(BaseModel):
    """The DeadlineTuner and which SLAI knob it moves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    knob: Literal["theta", "tbt_slack_s"] = Field(
        default="theta", description="theta: Θ (theta_low, theta_high keeps its gap above); or the TBT slack"
    )
    tuner: DeadlineTunerParams


class ControllerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_policy: PolicySpec = Field(default_factory=lambda: parse_policy(DEFAULT_POLICY))
    mode: Mode = "active"
    objective: ObjectiveParams = Field(default_factory=ObjectiveParams)
    tuner: KTunerParams = Field(default_factory=KTunerParams)
    guard: GuardParams = Field(default_factory=GuardParams)
    deadline: DeadlineParams | None = None
    whatif: WhatIfParams = Field(default_factory=WhatIfParams)
    sanity: SanityParams = Field(default_factory=SanityParams)
    reconcile: ReconcileParams = Field(default_factory=ReconcileParams)
    reserve: ReserveParams = Field(default_factory=ReserveParams)

    @field_validator("initial_policy", mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        return parse_policy(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _same_family(self) -> ControllerParams:
        k_mode = arm_of_policy(self.initial_policy) is not None
        if k_mode != (arm_of_policy(self.guard.safe_policy) is not None):
            raise ValueError("guard.safe_policy must be of the initial policy's family (an engine cannot switch "
                             "between queue-ordering and token-budget policies while requests are in flight)")
        if not k_mode and self.initial_policy.kind == "slai" and self.deadline is None:
            raise ValueError("an slai initial policy needs a [deadline] table (the DeadlineTuner's parameters)")
        if not k_mode and not isinstance(self.initial_policy, SLAISpec):
            raise ValueError(f"nothing tunes a {self.initial_policy.kind} policy: start from fcfs/klpm/lpm or slai")
        if isinstance(self.whatif.arms, list) and not set(self.whatif.arms) <= set(self.tuner.arms):
            raise ValueError(f"whatif.arms {self.whatif.arms} must be among the tuner's arms {self.tuner.arms}")
        return self


def unavailable(start_s: float, end_s: float, reason: str, active: PolicySpec | None = None) -> Observation:
    """The observation the shell records for a tick whose ``observe()`` failed: stale, unreachable, the reason."""
    return Observation(start_s=start_s, end_s=end_s, arrivals=0, completions=0, stale=True, stale_reason=reason,
                       active_policy=active, reachable=False)


def _knob_of(spec: PolicySpec, knob: str) -> float | None:
    if not isinstance(spec, SLAISpec):
        return None
    return float(spec.theta_low if knob == "theta" else spec.tbt_slack_s)


def _with_knob(spec: PolicySpec, knob: str, value: float) -> PolicySpec:
    """The SLAI spec with the knob set (validated by policies/slai.py; Θ above the memory limit keeps its gap)."""
    assert isinstance(spec, SLAISpec)
    return with_theta(spec, value) if knob == "theta" else with_tbt_slack(spec, value)


def _window(obs: Observation, score: Score) -> WindowSummary:
    tbt99 = obs.tbt.quantile(0.99) if obs.tbt.count else math.nan
    return WindowSummary(
        start_s=obs.start_s, end_s=obs.end_s, arrivals=obs.arrivals, completions=obs.completions,
        arrival_rate_rps=obs.arrival_rate_rps, queue_len=obs.queue_len, running=obs.running,
        cache_hit_rate=obs.cache_hit_rate, kv_utilization=obs.kv_utilization, ttft_samples=score.samples,
        ttft_p50_s=score.ttft_p50_s, ttft_p99_s=score.ttft_tail_s, attainment=score.attainment, tail_s=score.tail_s,
        oldest_wait_s=obs.oldest_wait_s, tbt_p99_s=tbt99 if math.isfinite(tbt99) else None,
        active_policy=policy_label(obs.active_policy) if obs.active_policy is not None else None,
        stale=obs.stale, stale_reason=obs.stale_reason,
    )


class Controller:
    """State + observation -> state + Decision. Thread-unsafe: the shell serialises calls."""

    def __init__(self, params: ControllerParams | dict[str, Any] | None = None, run_id: str = "run") -> None:
        self.params = params if isinstance(params, ControllerParams) else ControllerParams.model_validate(params or {})
        p = self.params
        self.run_id = run_id
        self.tick = 0
        self.mode: Mode = p.mode
        self.ktuner = KTuner(p.tuner)
        self.guard = Guard(p.guard)
        self.deadline = DeadlineTuner(p.deadline.tuner) if p.deadline is not None else None
        if self.deadline is not None and p.deadline is not None:
            start = _knob_of(p.initial_policy, p.deadline.knob)
            if start is not None:
                self.deadline.track(start)  # continue from the knob the initial policy sets
        self.deadline_mode = arm_of_policy(p.initial_policy) is None
        self.target: PolicySpec = p.initial_policy  # what the controller wants the engine to run
        self.guard.last_good = p.initial_policy
        self.reconciler = Reconciler(p.reconcile)  # what the engine runs vs what we want; failed pushes
        self.last_end_s: float | None = None
        self.whatif = WhatIf(p.whatif, p.objective, p.tuner.estimate_weight)
        self.pool = WindowPool(p.objective.min_samples, p.objective.pool_max_windows)  # thin windows (pooling.py)
        self._vetoed: str | None = None  # filter mode: the exploration the replay refused this tick
        # schedule_conservativeness, tuned beside the policy (reserve_tuner.py); None: [reserve] off
        self.reserve = ReserveTuner(p.reserve, p.reconcile) if p.reserve.enabled else None

    # -- operator controls (the shell serialises them with step) ---------------------------------------------------
    def pin(self, spec: PolicySpec) -> None:
        if (arm_of_policy(spec) is None) != self.deadline_mode:
            raise ValueError(f"cannot pin {policy_label(spec)}: the engine runs the other policy family")
        self.guard.pin(spec)

    def unpin(self) -> None:
        self.guard.unpin()

    def set_mode(self, mode: Mode) -> None:
        if mode == "active" and self.mode != "active":
            self.reconciler.pending = "switched to active mode"  # the engine may run anything: push at the next tick
        self.mode = mode

    # -- what-if replay (the shell runs the replayer, see whatif.py) ------------------------------------------------
    def whatif_active(self) -> bool:
        """The shell should keep the engine's state at each window start (replay on, k-LPM family, no pin)."""
        return self.params.whatif.enabled and not self.deadline_mode and self.guard.pinned is None

    def whatif_arms(self) -> list[ArmValue]:
        """The arms to replay for the next step, running arm first (empty: no replay on the next tick)."""
        if not self.whatif_active() or (self.tick + 1) % self.params.whatif.every_ticks:
            return []
        running = arm_of_policy(self.guard.running if self.guard.running is not None else self.target)
        return self.whatif.arms_to_replay(running, self.ktuner.arms)

    # -- the tick -------------------------------------------------------------------------------------------------
    def step(self, obs: Observation, whatif: ReplayReport | None = None) -> Decision:
        """One tick. ``whatif``: the shell's replay of this window under candidate arms (None: no replay)."""
        self.tick += 1
        t, g, rec = self.tick, self.guard, self.reconciler
        obs = gate(obs, self.params.sanity, self.last_end_s)  # implausible values: a stale window, never data
        score = evaluate(obs, self.params.objective)
        fresh = not obs.stale
        if self.last_end_s is not None and obs.end_s <= self.last_end_s and fresh:
            fresh, score = False, Score(reward=None, why_none="window does not move time forward")
        restarted = rec.note(obs)
        known, reported = rec.engine_report(obs)
        if fresh and ((known and reported != g.running) or (restarted and not known)):
            # the engine ran something else than we thought (a restart, a lost policy): nothing to credit to ours
            g.set_running(reported, t - 1)
        g.note_fresh(fresh)
        if fresh:
            self.last_end_s = obs.end_s
        window, window_score, pooled = obs, score, None  # the evidence: this window, or thin ones merged
        if fresh and score.thin and not self.deadline_mode:
            merged = self.pool.add(obs, g.running)
            if merged is not None:
                window, pooled = merged, self.pool.merged_windows
                score = evaluate(merged, self.params.objective)
        else:
            self.pool.clear()
        context, credited, replay = self._learn_all(window, score, t, fresh, whatif)
        if fresh:
            g.record_tail(t, score.tail_s, self.ktuner.context_label(window) if not self.deadline_mode else None)
        previous = self.target
        deadline_info: list[dict[str, Any]] = []

        def deadline_step() -> tuple[PolicySpec, Reason, str, dict[str, Any]]:
            out = self._deadline_step(obs)
            deadline_info.append(out[3])
            return out

        g.expire(t)
        tick = Tick(t=t, obs=obs, score=score, fresh=fresh, target=self.target, initial=self.params.initial_policy,
                    deadline_mode=self.deadline_mode, ttft_target_s=self.params.objective.ttft_target_s,
                    ktuner=self.ktuner, whatif=self.whatif, deadline_step=deadline_step)
        choice = run_chain(g, tick)  # the guard's rules, in order; nothing else decides
        chosen, reason, detail = choice.policy, choice.reason, choice.detail
        proposal = arm_label(choice.proposal.arm) if choice.proposal is not None else None
        self._vetoed = tick.vetoed
        if self.deadline is not None and self.deadline_mode and reason != "exploit":
            knob = _knob_of(chosen, self.params.deadline.knob) if self.params.deadline else None
            if knob is not None:
                self.deadline.track(knob)  # a guard or the operator set it: continue from there
        if chosen != previous and reason not in ("explore", "rollback"):
            g.trust(chosen)
        self.target = chosen
        if context is None:
            context = self.ktuner.context_label(obs) if fresh and not self.deadline_mode else None
        push, sync = rec.plan(chosen, obs, g.running, t, self.mode == "active")
        if replay is not None and self._vetoed is not None:
            replay = replay.model_copy(update={"vetoed": self._vetoed})
        reserve = None if self.reserve is None else self.reserve.step(
            obs, t, fresh=fresh, fallback=g.in_fallback, pinned=g.pinned is not None, tail_s=score.tail_s,
            ttft_target_s=self.params.objective.ttft_target_s, active=self.mode == "active")
        return Decision(
            tick_id=t, decision_id=f"{self.run_id}:{t}", time_s=obs.end_s, window=_window(obs, window_score),
            learner=LearnerSummary(
                learner=self.params.tuner.learner if not self.deadline_mode else "deadline_pid",
                context=context, reward=score.reward, why_no_reward=score.why_none, credited=credited,
                pooled_windows=pooled,
                proposal=proposal, arms=self.ktuner.summary(context) if context else {},
            ),
            previous=previous, policy=chosen, policy_label=policy_label(chosen), changed=chosen != previous,
            reason=reason, rule=choice.rule, detail=detail, mode=self.mode, push=push, reconcile=sync,
            conditions=rec.summary(), guard=g.summary(t), deadline=deadline_info[0] if deadline_info else None,
            whatif=replay, reserve=reserve,
        )

    def record_apply(self, decision: Decision, ok: bool, error: str | None = None, *, unsupported: bool = False,
                     supported_kinds: frozenset[str] | None = None) -> Decision:
        """The shell's report on pushing ``decision.policy``; returns the decision with the outcome filled in.

        ``unsupported``: the engine refused the policy (UnsupportedPolicy), with the kinds its ``capabilities()``
        lists when the shell could ask: a condition with backoff instead of a retry every tick (reconcile.py).
        """
        if ok:
            self.guard.set_running(decision.policy, decision.tick_id)
            self.reconciler.applied(decision.policy)
        else:
            self.reconciler.failed(decision.policy, decision.tick_id, error or "apply failed", unsupported,
                                   supported_kinds)
        return decision.model_copy(update={"applied": ok, "apply_error": error,
                                           "conditions": self.reconciler.summary()})

    def record_reserve_apply(self, decision: Decision, ok: bool, error: str | None = None, *,
                             unsupported: bool = False, readback: dict[str, float] | None = None) -> Decision:
        """The shell's report on pushing ``decision.reserve.value``; returns the decision with the outcome."""
        assert decision.reserve is not None and self.reserve is not None
        self.reserve.applied(decision.tick_id, ok, unsupported)
        return decision.model_copy(update={"reserve": decision.reserve.model_copy(
            update={"applied": ok, "apply_error": error, "readback": readback})})

    # -- pieces ------------------------------------------------------------------------------------------------------
    def _learn(self, obs: Observation, score: Score, t: int) -> tuple[str | None, str | None]:
        """Credit the window's reward to the running arm, if the window is evidence and the arm has settled."""
        k = arm_of_policy(self.guard.running)
        if score.reward is None or k is None or self.deadline_mode or k not in self.ktuner.arms:
            return None, None
        if not self.guard.settled(t):
            return None, None
        return self.ktuner.update(k, score.reward, obs), arm_label(k)

    def _learn_all(self, obs: Observation, score: Score, t: int, fresh: bool, report: ReplayReport | None
                   ) -> tuple[str | None, str | None, WhatIfRecord | None]:
        """The window's evidence: the live reward (``_learn``) and, with a replay, the counterfactual rewards."""
        if report is None:
            return (*self._learn(obs, score, t), None)
        record = self.whatif.score(report)
        if not fresh or self.deadline_mode:
            return (*self._learn(obs, score, t), record)
        running = arm_of_policy(self.guard.running)
        if self.whatif.replaces_live(record, running):
            context, credited = None, None  # prior: the running arm's replay, comparable with the others', counts
        else:
            context, credited = self._learn(obs, score, t)
        return context, credited, self.whatif.learn(record, report, self.ktuner, obs, running, score.reward)

    def _deadline_step(self, obs: Observation) -> tuple[PolicySpec, Reason, str, dict[str, Any]]:
        assert self.deadline is not None and self.params.deadline is not None
        knob_name = self.params.deadline.knob
        current = self.guard.running if self.guard.running is not None else self.target
        p99_tbt_s = obs.tbt.quantile(0.99) if obs.tbt.count else math.nan
        before = _knob_of(current, knob_name)
        if before is None:
            return current, "guard", f"{policy_label(current)} has no {knob_name} knob: hold", {}
        # NaN (no TBT samples) holds inside the tuner; an infinite P99 is not a measurement: hold here
        knob = before if math.isinf(p99_tbt_s) else self.deadline.step(p99_tbt_s, obs.end_s)
        info = {"knob": knob_name, "value": knob, "before": before,
                "tbt_p99_s": p99_tbt_s if math.isfinite(p99_tbt_s) else None, "error": self.deadline.last_error}
        if knob == before:
            return current, "exploit", f"{knob_name} held at {knob:.3g}", info
        return _with_knob(current, knob_name, knob), "exploit", f"{knob_name} {before:.3g} -> {knob:.3g}", info

    def status(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "tick_id": self.tick, "mode": self.mode, "target": policy_label(self.target),
            "deadline_mode": self.deadline_mode, "guard": self.guard.summary(self.tick),
            "conditions": self.reconciler.summary(), "engine_generation": self.reconciler.generation,
            "learner": self.params.tuner.learner,
            **({"reserve": self.reserve.summary()} if self.reserve is not None else {}),
            "knowledge": {ctx: self.ktuner.summary(ctx) for ctx in sorted(self.ktuner.stats)},
            **({"whatif": {ctx: self.whatif.summary(ctx) for ctx in sorted(self.whatif.stats)}}
               if self.params.whatif.enabled else {}),
        }
