"""SGLang's admission reserve, set at run time: ``schedule_conservativeness`` through ``/set_internal_state``.

Where SGLang 0.5.23 reads it: only once, when the scheduler starts. ``Scheduler.__init__``
(``srt/managers/scheduler.py``) builds ``self.new_token_ratio_tracker = NewTokenRatioTracker.from_config()``
(``srt/managers/scheduler_components/new_token_ratio_tracker.py``), which computes the reserve share from
``get_schedule().schedule_conservativeness``::

    init = min(SGLANG_INIT_NEW_TOKEN_RATIO (0.7) * schedule_conservativeness, 1)
    min  = min(init * SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR (0.14), 1)
    decay per decode step = (init - min) / SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS (600)

Every prefill pass hands ``tracker.current`` to the ``PrefillAdder`` (a new request is admitted only if the KV
cache can also hold that share of every running request's remaining output); a decode step decays it, a
retraction raises it to SGLang's estimate, an idle scheduler resets it to ``init``. SGLang's own
``/set_internal_state`` handler table (``srt/managers/scheduler_components/internal_state.py``) has no key for it,
so changing it at run time takes two steps, both done here in the scheduler process:

1. ``get_context().override(source="schedctl", schedule_conservativeness=v)``: SGLang's own config override, so
   that everything reading ``get_schedule()`` from now on (the tracker included) sees the new value;
2. a new ``NewTokenRatioTracker.from_config()`` (SGLang's formula, not a copy of it) replaces the scheduler's,
   keeping the decay where it was: the current share is scaled by new init / old init and clipped to the new
   [min, init].

The key is ``schedctl_schedule_conservativeness`` (a number in (0, ``MAX_CONSERVATIVENESS``]); the readback in
``/server_info`` (``internal_states[i]["schedctl"]["reserve"]``) is read from the scheduler itself: the config
leaf and the tracker's init, min and current share. Nothing here runs unless the key is pushed; any failure is
the plugin's usual fallback (counted, logged once, SGLang keeps running with the reserve it had).
"""

from __future__ import annotations

from typing import Any

from schedctl.sim.running import rescaled_share

KEY_CONSERVATIVENESS = "schedctl_schedule_conservativeness"
MAX_CONSERVATIVENESS = 10.0  # 0.7 * 10 is far past the share's cap of 1: larger values change nothing


def check_conservativeness(value: Any) -> float:
    """The pushed value as a float in (0, MAX_CONSERVATIVENESS] (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{KEY_CONSERVATIVENESS} must be a number, got {value!r}")
    v = float(value)
    if not 0.0 < v <= MAX_CONSERVATIVENESS:
        raise ValueError(f"{KEY_CONSERVATIVENESS} must be in (0, {MAX_CONSERVATIVENESS:g}], got {v!r}")
    return v


def apply_conservativeness(scheduler: Any, value: float) -> None:
    """Set ``schedule_conservativeness`` in this scheduler process and rebuild its reserve tracker from it."""
    from sglang.srt.managers.scheduler_components.new_token_ratio_tracker import NewTokenRatioTracker
    from sglang.srt.runtime_context import get_context

    old = scheduler.new_token_ratio_tracker
    get_context().override(source="schedctl", schedule_conservativeness=value)
    new = NewTokenRatioTracker.from_config()
    new.current = rescaled_share(old.current, old.init, new.init, new.min)
    scheduler.new_token_ratio_tracker = new


def reserve_readback(scheduler: Any) -> dict[str, float]:
    """What this scheduler runs with now: the config leaf and the tracker's shares."""
    from sglang.srt.runtime_context import get_schedule

    t = scheduler.new_token_ratio_tracker
    return {"schedule_conservativeness": float(get_schedule().schedule_conservativeness),
            "new_token_ratio_init": float(t.init), "new_token_ratio_min": float(t.min),
            "new_token_ratio": float(t.current)}
