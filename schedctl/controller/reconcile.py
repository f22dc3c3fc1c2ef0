"""Reconcile: make the engine run the desired policy, level-triggered, as a Kubernetes controller does. Pure.

Each tick, after the guard chose the desired policy, :meth:`Reconciler.plan` compares it with what the engine
reports it runs (``Observation.active_policy`` when ``active_reported``, and its ``engine_generation``) and says
whether the shell must push, and why (the ``reconcile`` field of the decision):

* the engine reports a policy other than the desired one, or none of ours (it restarted and lost it) -> push;
* the engine does not report its policy: push when the desired policy differs from the last one that applied,
  when the engine's generation changed (it restarted), or when the last push failed;
* the first tick, and a switch from advisory to active mode, push whatever the engine reports (idempotent);
* a tick whose ``observe()`` failed (``reachable`` False) pushes nothing: a push would not land, and one that
  lands by chance as the engine comes back would be the fallback, replaced a tick later. The push waits for
  the first tick the engine answers — which pushes the policy desired then (the learned one when data is fresh).

Failures become conditions, one per policy, of two kinds:

* ``apply_failed`` (the engine did not answer the push, or its readback disagreed): transient, retried at the
  next tick the engine answers;
* ``unsupported`` (``UnsupportedPolicy``): retrying at once cannot heal it, so the next try waits
  ``unsupported_backoff_ticks``, doubling at each refusal up to ``unsupported_backoff_max_ticks``. The shell
  asks the adapter's ``capabilities()`` and the condition says whether the engine lists the kind at all.

A condition is cleared when a push of that policy succeeds or the engine reports it running.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schedctl.engine_adapter.base import Observation
from schedctl.policies.spec import PolicySpec, policy_label

ConditionKind = Literal["apply_failed", "unsupported"]


class ReconcileParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unsupported_backoff_ticks: int = Field(
        default=2, ge=1, le=10_000, description="ticks before a refused (UnsupportedPolicy) policy is tried again"
    )
    unsupported_backoff_max_ticks: int = Field(
        default=64, ge=1, le=100_000, description="most ticks between two tries of a refused policy (doubling)"
    )


class Condition(BaseModel):
    """Why the engine does not run a policy we pushed, and when it is tried again."""

    model_config = ConfigDict(frozen=True)

    kind: ConditionKind
    policy: str
    since_tick: int
    failures: int
    retry_at_tick: int
    message: str


def _label(spec: PolicySpec | None) -> str:
    return "its own order" if spec is None else policy_label(spec)


class Reconciler:
    """What the engine runs, as far as it tells us, and the conditions of failed pushes."""

    def __init__(self, params: ReconcileParams | None = None) -> None:
        self.params = params or ReconcileParams()
        self.pending: str | None = "first tick"  # a push is due whatever the engine reports
        self.generation: int | None = None
        self.conditions: dict[str, Condition] = {}
        self.restarted: str | None = None  # this tick's restart note (None: no restart seen)

    def engine_report(self, obs: Observation) -> tuple[bool, PolicySpec | None]:
        """(known, active): whether the engine told us what it runs, and what."""
        known = obs.reachable and (obs.active_policy is not None or obs.active_reported)
        return known, obs.active_policy if known else None

    def note(self, obs: Observation) -> str | None:
        """Take the engine's generation from a reachable observation; returns a restart note when it changed."""
        self.restarted = None
        if obs.reachable and obs.engine_generation is not None:
            if self.generation is not None and obs.engine_generation != self.generation:
                self.restarted = f"engine restarted (generation {self.generation} -> {obs.engine_generation})"
            self.generation = obs.engine_generation
        return self.restarted

    def plan(self, desired: PolicySpec, obs: Observation, running: PolicySpec | None, tick: int,
             active: bool) -> tuple[bool, str | None]:
        """(push, why): whether the shell must push ``desired`` this tick."""
        if not active:
            return False, None
        known, reported = self.engine_report(obs)
        label = policy_label(desired)
        if known and reported == desired:
            self.conditions.pop(label, None)  # the engine runs it: whatever failed before has healed
        why: str | None
        if self.pending is not None:
            why = self.pending
        elif known:
            why = None if reported == desired else f"engine runs {_label(reported)}, want {label}"
        elif self.restarted is not None:
            why = self.restarted
        elif label in self.conditions:
            why = f"last push of {label} failed"
        elif desired != running:
            why = f"{_label(running)} -> {label}"
        else:
            why = None
        if why is None:
            return False, None
        if self.restarted is not None and why != self.restarted:
            why = f"{self.restarted}: {why}"
        if not obs.reachable:
            return False, f"push deferred, engine unreachable ({why})"
        cond = self.conditions.get(label)
        if cond is not None and cond.kind == "unsupported" and tick < cond.retry_at_tick:
            return False, f"not pushed: {label} refused {cond.failures}x, next try at tick {cond.retry_at_tick}"
        return True, why

    def applied(self, spec: PolicySpec) -> None:
        self.pending = None
        self.conditions.pop(policy_label(spec), None)

    def failed(self, spec: PolicySpec, tick: int, error: str, unsupported: bool,
               supported_kinds: Iterable[str] | None = None) -> Condition:
        label = policy_label(spec)
        old = self.conditions.get(label)
        kind: ConditionKind = "unsupported" if unsupported else "apply_failed"
        failures = old.failures + 1 if old is not None and old.kind == kind else 1
        since = old.since_tick if old is not None and old.kind == kind else tick
        message = error
        if unsupported:
            p = self.params
            wait = min(p.unsupported_backoff_max_ticks, p.unsupported_backoff_ticks * 2 ** min(failures - 1, 30))
            retry = tick + wait
            if supported_kinds is not None:
                kinds = sorted(supported_kinds)
                message += (f" (the engine accepts {', '.join(kinds) or 'no policy of ours'}: "
                            + ("this spec's knobs are refused)" if spec.kind in kinds else f"not {spec.kind})"))
        else:
            retry = tick + 1
        cond = Condition(kind=kind, policy=label, since_tick=since, failures=failures, retry_at_tick=retry,
                         message=message)
        self.conditions[label] = cond
        return cond

    def summary(self) -> list[dict[str, object]]:
        return [c.model_dump() for c in self.conditions.values()]
