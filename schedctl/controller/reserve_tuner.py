"""ReserveTuner: SGLang's ``schedule_conservativeness`` tuned online, beside the queue-policy tuner. Pure.

Why a second tuner, not a product of arms. ``benchmarks/conservativeness.py`` (the embedded engine as SGLang
0.5.23 runs, H100 / Llama-3.1-8B, shared-prefix long-output traffic, KV held so that reserves decide admission,
600 requests at 8 and 16 req/s) finds the same best conservativeness for fcfs, klpm:4 and lpm at both loads (one
c for all three costs at most 1.6% of P99 TTFT), while c itself moves P99 TTFT by 7-46%: the two knobs are
separable. A product would split the k tuner's windows over len(c) x len(policies) arms, each seen less often,
for an interaction that is not there; a one-dimensional tuner beside it learns c from every window.

Why a feedback rule, not a bandit over c. The reserve's cost and benefit each have a direct signal in the window,
and each moves one way with c: a retraction (a running request sent back to the queue for memory, its prefill
and decode wasted) means the reserve was too small; a queue that waits while the KV cache has room means the
reserve (not the memory) is what holds requests back — too large. A bandit would have to learn the same thing
from a noisy P99 reward shared with the k tuner's moves. So, once per tick, along ``arms`` (sorted):

1. ``pinned`` — the operator pinned the queue policy: the reserve is held too (nothing moves under a pin);
2. ``stale`` — a stale window holds; while the guard falls back (``guard.stale_hold_ticks``) the value is
   ``safe``; the first fresh tick restores the value from before the fallback (``restore``);
3. ``no_signal`` — a window without a retraction count or KV use (the engine does not export them) holds: lowering
   blind could only cause retractions it would not see;
4. ``dwell`` — a value runs ``min_dwell_ticks`` windows before the next move (a window's retractions come from
   admissions made under the value before it);
5. ``retractions`` — ``raise_min_retractions`` or more retractions in the window: one step up; the value it left
   is refused for ``cooldown_ticks`` (a step down to it would retract again: no limit cycle);
6. ``headroom`` — ``lower_after_ticks`` fresh windows in a row with the queue waiting (``min_queue_len``), KV use
   at or below ``headroom_kv_utilization``, no retraction, and (``lower_only_when_slo_missed``) the TTFT tail
   over its target: one step down, unless that value is refused; otherwise ``hold``.

Reconcile, level-triggered as the queue policy's (``reconcile.py``): the engine reports the value it runs in
``Observation.conservativeness`` (SGLang: the plugin's readback in ``/server_info``; the embedded engine: its
config); a difference from the desired value is a push in that tick — a restart that lost it, a push that did not
land. An engine that does not report it gets a push when the value changes, the engine restarted (its generation
changed) or the last push failed. A refusal
(the adapter has no such knob, the plugin is not loaded) waits ``unsupported_backoff_ticks``, doubling up to
``unsupported_backoff_max_ticks``; other failures are retried at the next tick the engine answers. The shell
pushes through the adapter's ``set_conservativeness`` (``engine_adapter/base.py`` ``ReserveKnob``).

Every tick's choice is a :class:`ReserveRecord` in the decision (``Decision.reserve``). Not persisted: a restarted
sidecar starts again from ``initial`` (the learned value is a few windows of recent evidence, like the guard's).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schedctl.controller.reconcile import ReconcileParams
from schedctl.engine_adapter.base import Observation

MAX_CONSERVATIVENESS = 10.0  # the plugin's bound (engine_adapter/sglang/reserve.py): past it nothing changes
Action = Literal["raise", "lower", "hold", "fallback", "restore"]


class ReserveParams(BaseModel):
    """``[reserve]``: the conservativeness tuner (off by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(default=False, description="tune schedule_conservativeness beside the queue policy")
    arms: list[float] = Field(default=[0.3, 0.6, 1.0, 1.5], min_length=2, max_length=32,
                              description="the values it moves along, one step at a time (sorted on load)")
    initial: float = Field(default=1.0, gt=0, le=MAX_CONSERVATIVENESS,
                           description="the value at start (SGLang's default: 1.0); one of arms")
    safe: float = Field(default=1.0, gt=0, le=MAX_CONSERVATIVENESS,
                        description="the value while observations are stale (fallback); one of arms")
    min_dwell_ticks: int = Field(default=2, ge=1, le=1_000_000, description="windows a value runs before a move")
    raise_min_retractions: int = Field(default=1, ge=1, le=1_000_000,
                                       description="retractions in one window that raise the value one step")
    lower_after_ticks: int = Field(default=3, ge=1, le=1_000_000,
                                   description="calm windows in a row (queue waits, KV headroom, no retraction) "
                                   "before one step down")
    headroom_kv_utilization: float = Field(default=0.85, ge=0, le=1,
                                           description="KV use at or below this is headroom the reserve holds back")
    min_queue_len: int = Field(default=1, ge=1, le=1_000_000, description="waiting requests that count as a queue")
    lower_only_when_slo_missed: bool = Field(default=True,
                                             description="step down only when the window's TTFT tail missed its target")
    cooldown_ticks: int = Field(default=30, ge=0, le=1_000_000,
                                description="ticks a value that retracted is not stepped down to again")

    @model_validator(mode="after")
    def _check(self) -> ReserveParams:
        bad = [a for a in self.arms if not 0 < a <= MAX_CONSERVATIVENESS]
        if bad:
            raise ValueError(f"arms must be in (0, {MAX_CONSERVATIVENESS:g}], got {bad}")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must differ, got {self.arms}")
        object.__setattr__(self, "arms", sorted(self.arms))
        for name in ("initial", "safe"):
            if getattr(self, name) not in self.arms:
                raise ValueError(f"{name} ({getattr(self, name)}) must be one of arms {self.arms}")
        return self


class ReserveRecord(BaseModel):
    """The reserve tuner's part of one decision."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="null")

    value: float  # the conservativeness wanted from this tick on
    previous: float
    changed: bool
    action: Action
    rule: str  # pinned, stale, restore, no_signal, dwell, retractions, headroom, cooldown, bounds, calm
    detail: str
    retractions: int | None = None  # in the window
    calm_ticks: int = 0  # calm windows in a row so far (see ``headroom``)
    engine_value: float | None = None  # what the engine reported it runs (None: unknown)
    push: bool = False
    reconcile: str | None = None  # why the push (or why a due push waits)
    applied: bool = False
    apply_error: str | None = None
    readback: dict[str, float] | None = None  # the engine's reserve after the push


class ReserveTuner:
    """The feedback rule and the reconcile state of ``schedule_conservativeness``. No clock, no I/O."""

    def __init__(self, params: ReserveParams | dict[str, object] | None = None,
                 reconcile: ReconcileParams | None = None) -> None:
        self.params = params if isinstance(params, ReserveParams) else ReserveParams.model_validate(params or {})
        self.backoff = reconcile or ReconcileParams()
        self.value = self.params.initial  # desired
        self.running: float | None = None  # what the engine runs, as far as we know
        self.since_tick = 0  # tick from which `running` has run
        self.calm = 0
        self.refused: dict[float, int] = {}  # value -> tick until which a step down to it is refused
        self.learned: float | None = None  # the value before a fallback
        self.pending = True  # push whatever the engine reports (first tick)
        self.failures = 0
        self.retry_at = 0
        self.generation: int | None = None  # the engine's, as last seen (a change: it restarted)

    # -- the rule -------------------------------------------------------------------------------------------------
    def step(self, obs: Observation, tick: int, *, fresh: bool, fallback: bool, pinned: bool, tail_s: float | None,
             ttft_target_s: float, active: bool) -> ReserveRecord:
        """This tick's value and whether the shell must push it."""
        p, previous = self.params, self.value
        if active and fresh and obs.conservativeness is not None and obs.conservativeness != self.running:
            self.running, self.since_tick = obs.conservativeness, tick - 1  # the engine ran something else
        action, rule, detail = self._decide(obs, tick, fresh, fallback, pinned, tail_s, ttft_target_s)
        if action == "raise":
            self.refused[previous] = tick + p.cooldown_ticks
            self.value = self._neighbour(+1)
        elif action == "lower":
            self.value = self._neighbour(-1)
        elif action == "fallback":
            self.value = p.safe
        elif action == "restore" and self.learned is not None:
            self.value, self.learned = self.learned, None
        if self.value != previous:
            self.calm = 0
        if not active and self.running != self.value:  # advisory: nothing is pushed; dwell as if it had been
            self.running, self.since_tick = self.value, tick
        push, why = self._plan(obs, tick, active)
        return ReserveRecord(value=self.value, previous=previous, changed=self.value != previous, action=action,
                             rule=rule, detail=detail, retractions=obs.retractions, calm_ticks=self.calm,
                             engine_value=obs.conservativeness, push=push, reconcile=why)

    def _decide(self, obs: Observation, tick: int, fresh: bool, fallback: bool, pinned: bool, tail_s: float | None,
                ttft_target_s: float) -> tuple[Action, str, str]:
        p = self.params
        if pinned:
            return "hold", "pinned", "the operator pinned the queue policy: reserve held"
        if fallback:
            if self.learned is None:
                self.learned = self.value
            return "fallback", "stale", f"stale metrics: safe value {p.safe:g}"
        if not fresh:
            return "hold", "stale", "stale window: hold"
        if self.learned is not None:
            return "restore", "restore", f"fresh data again: {self.learned:g} restored"
        if obs.retractions is None or obs.kv_utilization is None:
            return "hold", "no_signal", "the engine reports no retraction count or KV use: hold"
        retracted = obs.retractions >= p.raise_min_retractions
        calm = (not obs.retractions and obs.queue_len >= p.min_queue_len
                and obs.kv_utilization <= p.headroom_kv_utilization
                and (not p.lower_only_when_slo_missed or (tail_s is not None and tail_s > ttft_target_s)))
        self.calm = self.calm + 1 if calm else 0
        ran = tick - self.since_tick if self.running == self.value else 0
        if ran < p.min_dwell_ticks:
            return "hold", "dwell", f"dwell {ran}/{p.min_dwell_ticks}"
        if retracted:
            if self.value == p.arms[-1]:
                return "hold", "bounds", f"{obs.retractions} retractions, already at the largest value {self.value:g}"
            return "raise", "retractions", f"{obs.retractions} retractions: {self.value:g} -> {self._neighbour(+1):g}"
        if self.calm < p.lower_after_ticks:
            return "hold", "calm", f"calm windows {self.calm}/{p.lower_after_ticks}"
        if self.value == p.arms[0]:
            return "hold", "bounds", f"queue waits with KV headroom, already at the smallest value {self.value:g}"
        down = self._neighbour(-1)
        if self.refused.get(down, -1) > tick:
            return "hold", "cooldown", f"{down:g} retracted before: refused until tick {self.refused[down]}"
        return "lower", "headroom", (f"queue {obs.queue_len} waits with KV use {obs.kv_utilization:.2f} and no "
                                     f"retraction for {self.calm} windows: {self.value:g} -> {down:g}")

    def _neighbour(self, direction: int) -> float:
        arms = self.params.arms
        i = arms.index(self.value) + direction
        return arms[min(max(i, 0), len(arms) - 1)]

    # -- reconcile ------------------------------------------------------------------------------------------------
    def _plan(self, obs: Observation, tick: int, active: bool) -> tuple[bool, str | None]:
        if not active:
            return False, None
        reported = obs.conservativeness if obs.reachable else None
        restarted = obs.reachable and obs.engine_generation is not None and self.generation is not None \
            and obs.engine_generation != self.generation
        if obs.reachable and obs.engine_generation is not None:
            self.generation = obs.engine_generation
        why: str | None
        if self.pending:
            why = "first tick"
        elif reported is not None:
            why = None if reported == self.value else f"engine runs {reported:g}, want {self.value:g}"
        elif restarted:
            why = "engine restarted"
        elif self.failures:
            why = "last push failed"
        elif self.running != self.value:
            why = f"{'unknown' if self.running is None else format(self.running, 'g')} -> {self.value:g}"
        else:
            why = None
        if why is None:
            return False, None
        if not obs.reachable:
            return False, f"push deferred, engine unreachable ({why})"
        if tick < self.retry_at:
            return False, f"not pushed: refused {self.failures}x, next try at tick {self.retry_at}"
        return True, why

    def applied(self, tick: int, ok: bool, unsupported: bool = False) -> None:
        """The shell's report on a push of ``self.value`` at ``tick``."""
        if ok:
            if self.running != self.value:
                self.running, self.since_tick = self.value, tick
            self.pending, self.failures, self.retry_at = False, 0, 0
            return
        self.failures += 1
        if unsupported:
            b = self.backoff
            self.retry_at = tick + min(b.unsupported_backoff_max_ticks,
                                       b.unsupported_backoff_ticks * 2 ** min(self.failures - 1, 30))
        else:
            self.retry_at = tick + 1

    def summary(self) -> dict[str, object]:
        return {"value": self.value, "running": self.running, "since_tick": self.since_tick, "calm_ticks": self.calm,
                "refused": {f"{v:g}": t for v, t in self.refused.items()}}
