"""What a sidecar learned, as a JSON-safe dict, and its restore into a new controller. Pure (the shell does I/O).

The state holds the KTuner's learner (``Bandit.state()``: its arms' statistics and its generator), the per-context
arm means the guard reads, and the policy the controller wanted. It is restored only into a controller whose
settings would have learned the same thing: the same learner, arms and learner parameters, the same objective
(rewards from another objective are on another scale) and the same policy family. Anything else is refused with
a :class:`StateMismatch` naming the setting, never silently loaded. The guard's memory (baselines, dwell) is not
kept: it is about the engine's recent windows, which a restart interrupts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from schedctl.bandits import bandit_from_state
from schedctl.controller.ktuner import ArmStats
from schedctl.policies.spec import parse_policy, policy_label

if TYPE_CHECKING:
    from schedctl.controller.core import Controller

STATE_VERSION = 1


class StateMismatch(ValueError):
    """A saved state that does not fit these settings; the message says which setting differs."""


def _fingerprint(c: Controller) -> dict[str, Any]:
    p = c.params
    tuner = p.tuner.model_dump(mode="json", exclude={"seed"})  # the generator's state is saved itself
    return {"family": "slai" if c.deadline_mode else "k", "tuner": tuner,
            "objective": p.objective.model_dump(mode="json")}


def controller_state(c: Controller) -> dict[str, Any]:
    """The controller's learning, to be saved by the shell after a tick."""
    return {
        "schedctl_state": STATE_VERSION,
        "run_id": c.run_id,
        "tick_id": c.tick,
        "settings": _fingerprint(c),
        "target": policy_label(c.target),
        "learner": c.ktuner.learner.state(),
        "arm_means": {ctx: {arm: s.model_dump() for arm, s in arms.items()} for ctx, arms in c.ktuner.stats.items()},
    }


def _diff(saved: Any, current: Any, path: str) -> str | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = _diff(saved.get(key), current.get(key), f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    return None if saved == current else f"{path}: saved {saved!r}, these settings {current!r}"


def restore(c: Controller, state: dict[str, Any]) -> str:
    """Load ``state`` into a controller that has not ticked; returns a one-line summary. StateMismatch if it
    was written under other settings or is not a schedctl state."""
    if not isinstance(state, dict) or state.get("schedctl_state") != STATE_VERSION:
        raise StateMismatch(f"not a schedctl learner state of version {STATE_VERSION}")
    differs = _diff(state.get("settings"), _fingerprint(c), "")
    if differs is not None:
        raise StateMismatch(f"written under other settings ({differs})")
    try:
        learner = bandit_from_state(state["learner"])
        stats = {ctx: {arm: ArmStats.model_validate(s) for arm, s in arms.items()}
                 for ctx, arms in state["arm_means"].items()}
        target = parse_policy(state["target"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StateMismatch(f"unreadable ({type(exc).__name__}: {exc})") from None
    if tuple(learner.arms) != c.ktuner.arms:
        raise StateMismatch(f"its learner has arms {list(learner.arms)}, these settings {list(c.ktuner.arms)}")
    c.ktuner.learner = learner
    c.ktuner.rebind()
    c.ktuner.stats = stats
    c.target = target
    c.guard.last_good = target
    n = sum(s.count for arms in stats.values() for s in arms.values())
    return f"resumed {state.get('run_id')} at tick {state.get('tick_id')}: {n} rewards in {len(stats)} contexts, " \
           f"policy {policy_label(target)}"
