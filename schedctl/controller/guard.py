"""The guard: what keeps a learner from hurting the engine it tunes, as a chain of small named rules. Pure.

``Controller.step`` runs :data:`CHAIN` and nothing else decides. Each rule sees the tick (:class:`Tick`: the
window, its score, the learner) and the choice so far (:class:`Choice`) and returns it, changed or not; a rule
that decides ends the chain (``final``). ``Decision.rule`` names the rule that acted. The guard's memory and
settings are in ``guard_state.py`` (``Guard``, ``GuardParams``, re-exported here).

In order:

1. ``pin`` — an operator's pinned policy is the decision, every tick, until unpinned.
2. ``stale`` — a stale window (or an engine that did not answer) is counted; for the first ``stale_hold_ticks``
   such ticks in a row the policy is held, after that ``safe_policy`` is chosen (fallback) until fresh data.
3. ``restore`` — the first fresh tick after a fallback chooses the policy the learner had before it.
4. ``deadline`` — slai mode: the DeadlineTuner moves Θ (or the TBT slack); the k rules below do not run.
5. ``rollback`` — after every change the guard remembers the tail of the last good policy in the current load
   context; an exploration whose tail exceeds it by ``rollback_margin_fraction`` for ``rollback_ticks`` fresh
   windows in a row is rolled back to the last good policy and not explored again for
   ``rollback_cooldown_ticks``. A policy that runs ``min_dwell_ticks`` without regressing becomes the last good
   one; a load-context change drops the baseline, and a new one counts once it spans ``baseline_min_windows``
   windows (workload-switch scenarios: P99 TTFT 4-9% lower). Moves to the best-known arm are not rolled back.
6. ``dwell`` — a policy runs at least ``min_dwell_ticks`` windows before the learner may change it.
7. ``idle`` — a window with an empty queue within the SLO holds: the order made no difference.
8. ``learner`` — the KTuner proposes an arm (a policy that is not an arm jumps to the proposal).
9. ``locality`` — with ``local_exploration`` the proposal is a direction: the target is the context's best arm
   (the leader) or its neighbour on the proposal's side, or the initial policy in a context where it has not
   run. Tail latency is unimodal in k (FCFS loses the cache, LPM starves), so farther arms are not worth it.
   With mixed families (``arms = ["fcfs", "klpm:4", "lpm", "hrrn"]``) "neighbour" is along the leader's axis;
   an arm of another family is one step away (``ktuner.arm_steps``), so a proposal there is taken as it is.
10. ``explore_filter`` — an exploration is refused by the what-if replay's veto (filter mode), and while the
    window met the SLO unless ``explore_when_slo_met``.
11. ``hysteresis`` — a known arm replaces the current one only if its mean reward leads by ``hysteresis_reward``.
12. ``step_limit`` — a change moves at most ``max_step_arms`` positions along the arms of one axis (the k
    axis, the lpm-aging N axis); a switch to another family counts as one step (families are not ordered against
    each other); an exploration of a policy refused after a rollback holds.

Attribution: a window's latencies reflect the queue the previous policy left. The defences are the dwell, credit
only for windows that ran wholly under one policy, idle windows not credited (``objective.py``), and optionally
``settle_ticks`` more windows skipped after a change (measured on `schedctl bench adaptive`, 6 seeds: 1 or 2 no
better than 0, so the default is 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from schedctl.controller.decision import Reason
from schedctl.controller.guard_state import Guard, GuardParams
from schedctl.controller.ktuner import KTuner, Proposal, arm_label, arm_of_policy
from schedctl.controller.objective import Score
from schedctl.controller.whatif import WhatIf
from schedctl.engine_adapter.base import Observation
from schedctl.policies.arms import ArmValue, spec_for
from schedctl.policies.spec import PolicySpec, policy_label

__all__ = ["CHAIN", "Choice", "Guard", "GuardParams", "Rule", "Tick", "run_chain"]


@dataclass
class Tick:
    """What the rules see of this tick (the controller fills it in; rules read it and the guard)."""

    t: int
    obs: Observation
    score: Score
    fresh: bool
    target: PolicySpec  # what the controller wanted until now
    initial: PolicySpec
    deadline_mode: bool
    ttft_target_s: float
    ktuner: KTuner
    whatif: WhatIf
    deadline_step: Callable[[], tuple[PolicySpec, Reason, str, dict[str, Any]]]
    vetoed: str | None = None  # set by explore_filter: the exploration the replay refused


@dataclass(frozen=True)
class Choice:
    """The choice so far: the policy, why, which rule acted; the learner's working state for the k rules."""

    policy: PolicySpec
    reason: Reason = "guard"
    detail: str = ""
    rule: str = ""
    final: bool = False
    proposal: Proposal | None = None
    current: PolicySpec | None = None  # what runs now (the engine's, or the target)
    target_k: ArmValue | None = None  # where the learner wants to go
    leader: ArmValue | None = None
    note: str = ""

    @property
    def cur_k(self) -> ArmValue | None:
        return arm_of_policy(self.current)

    @property
    def kind(self) -> Reason:
        return "exploit" if self.target_k == self.leader else "explore"

    def hold(self, rule: str, detail: str) -> Choice:
        """Stay with what runs now; the chain ends."""
        assert self.current is not None
        return replace(self, policy=self.current, reason="guard", detail=self.note + detail, rule=rule, final=True)


class Rule(Protocol):
    name: str

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice: ...


def _final(policy: PolicySpec, reason: Reason, detail: str, rule: str) -> Choice:
    return Choice(policy=policy, reason=reason, detail=detail, rule=rule, final=True)


class Pin:
    name = "pin"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        return _final(g.pinned, "pinned", "operator pin", self.name) if g.pinned is not None else c


class Stale:
    name = "stale"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if tick.fresh:
            return c
        if g.should_fall_back():
            g.enter_fallback(tick.target)
            return _final(g.params.safe_policy, "fallback", f"{g.stale_ticks} stale ticks: safe policy", self.name)
        detail = f"stale data ({g.stale_ticks}/{g.params.stale_hold_ticks + 1} before fallback): hold"
        return _final(tick.target, "guard", detail, self.name)


class Restore:
    name = "restore"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if not g.in_fallback:
            return c
        learned = g.leave_fallback()
        return _final(learned or tick.target, "guard", "fresh data again: learned policy restored", self.name)


class Deadline:
    name = "deadline"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if not tick.deadline_mode:
            return c
        policy, reason, detail, _info = tick.deadline_step()
        return _final(policy, reason, detail, self.name)


class Rollback:
    name = "rollback"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if not g.rollback_due():
            return c
        assert g.running is not None and g.last_good is not None
        g.block(g.running, tick.t)
        detail = (f"tail regressed {g.regressed_ticks} windows past {g.params.rollback_margin_fraction:.0%} of "
                  f"{g.baseline_tail_s:.3g} s; {policy_label(g.running)} refused for "
                  f"{g.params.rollback_cooldown_ticks} ticks")
        return _final(g.last_good, "rollback", detail, self.name)


class Dwell:
    name = "dwell"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if g.dwell_done(tick.t):
            return c
        return _final(tick.target, "guard", f"dwell {g.windows_under_running(tick.t)}/{g.params.min_dwell_ticks}",
                      self.name)


class Idle:
    name = "idle"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if not tick.score.idle:
            return c
        return _final(tick.target, "guard", "idle window: the order made no difference, hold", self.name)


class Learner:
    name = "learner"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        kt = tick.ktuner
        prop = kt.select(tick.obs)
        current = g.running if g.running is not None else tick.target
        cur_k = arm_of_policy(current)
        if cur_k is None or cur_k not in kt.arms:
            return Choice(spec_for(prop.arm), prop.kind, "current policy is not an arm: jump to the proposal",
                          self.name, final=True, proposal=prop)
        return Choice(spec_for(prop.arm), prop.kind, rule=self.name, proposal=prop, current=current,
                      target_k=prop.arm, leader=kt.best_arm(prop.context, prefer=cur_k))


class Locality:
    name = "locality"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if not g.params.local_exploration or c.proposal is None:
            return c
        kt, prop = tick.ktuner, c.proposal
        home = arm_of_policy(tick.initial)
        if home in kt.arms and kt.estimate(prop.context, home) is None:
            # a load context where the operator's initial policy has not run yet: start from it, not from wherever
            # the last context left us (what was best there says nothing about this one)
            return replace(c, target_k=home, leader=home, rule=self.name,
                           note="new load context: from the initial policy; ")
        if c.leader is not None and prop.arm != c.leader:
            near = kt.neighbour_toward(c.leader, prop.arm)
            est = kt.estimate(prop.context, near)
            target = near if est is None or est.count < g.params.explore_min_samples else c.leader
            if target != prop.arm:
                return replace(c, target_k=target, rule=self.name,
                               note=f"{arm_label(prop.arm)} proposed; local to the leader {arm_label(c.leader)}: ")
        return c


class ExploreFilter:
    name = "explore_filter"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if c.proposal is None:
            return c
        assert c.target_k is not None and c.current is not None
        if c.target_k == c.cur_k:
            return replace(c, policy=c.current, reason=c.kind, detail=c.note + "stay", final=True)
        if c.kind != "explore":
            return c
        vetoed = tick.whatif.veto(c.proposal.context, c.target_k)
        if vetoed is not None:
            tick.vetoed = arm_label(c.target_k)
            return c.hold(self.name, vetoed)
        missed = tick.score.tail_s is not None and tick.score.tail_s > tick.ttft_target_s
        if not missed and not g.params.explore_when_slo_met:
            return c.hold(self.name, f"SLO not missed: no exploration of {arm_label(c.target_k)}")
        return c


class Hysteresis:
    name = "hysteresis"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if c.proposal is None:
            return c
        kt, ctx, target, cur_k = tick.ktuner, c.proposal.context, c.target_k, c.cur_k
        assert target is not None and cur_k is not None
        est_new, est_cur = kt.estimate(ctx, target), kt.estimate(ctx, cur_k)
        exploring = est_new is None or est_new.count < g.params.explore_min_samples
        if (not exploring and est_cur is not None and est_new is not None
                and est_new.mean < est_cur.mean + g.params.hysteresis_reward):
            return c.hold(self.name, f"hysteresis: {arm_label(target)} {est_new.mean:.3f} vs "
                                     f"{arm_label(cur_k)} {est_cur.mean:.3f}")
        return c


class StepLimit:
    name = "step_limit"

    def __call__(self, g: Guard, tick: Tick, c: Choice) -> Choice:
        if c.proposal is None:
            return c
        assert c.target_k is not None
        step_k = tick.ktuner.neighbour_toward(c.cur_k, c.target_k, g.params.max_step_arms)
        step = spec_for(step_k)
        if c.kind == "explore" and g.is_blocked(step, tick.t):
            return c.hold(self.name, f"{policy_label(step)} refused after a rollback")
        if step_k != c.target_k:
            note = c.note + f"one step toward {arm_label(c.target_k)}"
            return replace(c, policy=step, reason=c.kind, detail=note, rule=self.name, final=True)
        return replace(c, policy=step, reason=c.kind, detail=c.note or f"to {arm_label(c.target_k)}", final=True)


CHAIN: tuple[Rule, ...] = (Pin(), Stale(), Restore(), Deadline(), Rollback(), Dwell(), Idle(), Learner(),
                           Locality(), ExploreFilter(), Hysteresis(), StepLimit())


def run_chain(g: Guard, tick: Tick, chain: Sequence[Rule] = CHAIN) -> Choice:
    """Run the rules in order until one decides; the choice names the rule that acted."""
    choice = Choice(policy=tick.target, rule="none")
    for rule in chain:
        choice = rule(g, tick, choice)
        if choice.final:
            return choice
    return choice
