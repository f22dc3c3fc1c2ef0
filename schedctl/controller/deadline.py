"""DeadlineTuner: feedback control of an SLAI knob that holds P99 TBT at its target and gives the rest to TTFT.

SLAI marks a running decode critical (it runs before any prefill) once its last schedulable time
``LST = end of previous batch + TBT_slo - Θ · mean batch duration`` has passed. The knob here is Θ (or any
knob with the same effect, such as a TBT slack subtracted from the SLO).

Sign convention: with ``larger_knob_protects_tbt = True`` (Θ, slack) a LARGER knob makes decodes critical
EARLIER: P99 TBT goes down, prefills wait, TTFT goes up. So when P99 TBT is above its setpoint the tuner raises
the knob; when it is below (headroom) it lowers the knob and so spends the headroom on TTFT, down to
``knob_min``. Set ``larger_knob_protects_tbt = False`` for a knob that acts the other way (a TBT deadline).

The loop, once per controller tick, in ``step(p99_tbt_s, now_s)``:

1. the error is relative: ``(1 - margin_fraction) - p99_tbt_s / tbt_p99_target_s``, so gains do not depend
   on the target's scale (``kp``: knob units per unit of relative error; ``ki_per_s``: the same per second;
   ``kd_s``: per unit of relative error per second);
2. a simple-pid ``PID`` (output limits ``[knob_min, knob_max]``, which also clamp its integral) computes the
   new knob with ``dt`` = the simulated or real seconds since the last step, taken from ``now_s`` only;
   the PID's clock is injected (``time_fn``), so nothing here reads the wall clock;
3. inside the dead band (``|error| <= dead_band_fraction``) the knob is held;
4. the change is bounded by ``max_change_per_tick``;
5. when 3 or 4 changed the PID's answer, its integral is reset so that its output equals the applied knob
   (back-calculation anti-windup): the next tick continues from what the engine really runs, with no windup
   and no bump.

A window with no TBT samples (NaN) holds the knob. ``state()`` / ``from_state()`` round-trip through JSON
and the restored tuner gives the same next value.
"""

from __future__ import annotations

import math
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from simple_pid import PID

STATE_VERSION = 1


class DeadlineTunerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tbt_p99_target_s: float = Field(default=0.2, gt=0, le=3600, description="P99 time between tokens to hold")
    margin_fraction: float = Field(default=0.0, ge=0, lt=0.5, description="aim this fraction below the target")
    knob_initial: float = Field(default=5.0, ge=-1e6, le=1e6, description="the knob at start")
    knob_min: float = Field(default=0.0, ge=-1e6, le=1e6)
    knob_max: float = Field(default=20.0, ge=-1e6, le=1e6)
    kp: float = Field(default=4.0, ge=0, le=1e6, description="knob units per unit of relative TBT error")
    ki_per_s: float = Field(default=2.0, ge=0, le=1e6, description="knob units per unit of relative error per second")
    kd_s: float = Field(default=0.0, ge=0, le=1e6, description="knob units per (unit of relative error per second)")
    dead_band_fraction: float = Field(default=0.02, ge=0, lt=1, description="hold while |relative error| <= this")
    max_change_per_tick: float = Field(default=1.0, gt=0, le=1e6, description="largest knob change in one step")
    nominal_tick_s: float = Field(default=1.0, gt=0, le=86400,
                                  description="dt of the first step (no previous time yet)")
    larger_knob_protects_tbt: bool = True

    @model_validator(mode="after")
    def _check_range(self) -> DeadlineTunerParams:
        if not self.knob_min < self.knob_max:
            raise ValueError(f"knob_min ({self.knob_min}) must be below knob_max ({self.knob_max})")
        if not self.knob_min <= self.knob_initial <= self.knob_max:
            raise ValueError(f"knob_initial ({self.knob_initial}) must lie in [knob_min, knob_max]")
        return self

    @property
    def setpoint_fraction(self) -> float:
        return 1.0 - self.margin_fraction


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class DeadlineTuner:
    """PID on relative P99 TBT error -> SLAI knob, with dead band, rate limit and anti-windup. No clock, no I/O."""

    def __init__(self, params: DeadlineTunerParams | dict[str, Any]) -> None:
        self.params = params if isinstance(params, DeadlineTunerParams) else DeadlineTunerParams.model_validate(params)
        p = self.params
        sign = -1.0 if p.larger_knob_protects_tbt else 1.0  # reverse acting: TBT above setpoint -> knob up
        self._now_s = 0.0  # the PID's clock: whatever step() was last told
        self._pid = PID(
            Kp=sign * p.kp,
            Ki=sign * p.ki_per_s,
            Kd=sign * p.kd_s,
            setpoint=p.setpoint_fraction,
            sample_time=None,
            output_limits=(p.knob_min, p.knob_max),
            time_fn=lambda: self._now_s,
            starting_output=p.knob_initial,
        )
        self.knob = p.knob_initial
        self.last_now_s: float | None = None
        self.last_error: float | None = None  # relative error of the last step (for decision logs)

    def error(self, p99_tbt_s: float) -> float:
        """Relative error: positive when P99 TBT is below the setpoint (headroom), negative when above."""
        return self.params.setpoint_fraction - p99_tbt_s / self.params.tbt_p99_target_s

    def step(self, p99_tbt_s: float, now_s: float) -> float:
        """The knob for the next window, given the last window's P99 TBT and the time now (seconds)."""
        if self.last_now_s is not None and not now_s > self.last_now_s:
            raise ValueError(f"now_s must increase: {now_s} after {self.last_now_s}")
        if math.isnan(p99_tbt_s):  # no TBT samples: nothing to act on
            return self.knob
        if p99_tbt_s < 0 or math.isinf(p99_tbt_s):
            raise ValueError(f"p99_tbt_s must be a non-negative finite number, got {p99_tbt_s}")
        p = self.params
        dt_s = p.nominal_tick_s if self.last_now_s is None else now_s - self.last_now_s
        self._now_s = now_s
        err = self.error(p99_tbt_s)
        pid_out = self._pid(p99_tbt_s / p.tbt_p99_target_s, dt=dt_s)
        assert pid_out is not None  # simple-pid returns None only in manual mode or between sample times
        wanted = self.knob if abs(err) <= p.dead_band_fraction else pid_out
        new = _clamp(wanted, self.knob - p.max_change_per_tick, self.knob + p.max_change_per_tick)
        new = _clamp(new, p.knob_min, p.knob_max)
        if new != pid_out:
            self._track(new)
        self.knob, self.last_now_s, self.last_error = new, now_s, err
        return new

    def track(self, knob: float) -> None:
        """The engine runs ``knob`` now (a guard, rollback or operator set it): continue from it without a bump."""
        self.knob = _clamp(float(knob), self.params.knob_min, self.params.knob_max)
        self._track(self.knob)

    def _track(self, applied: float) -> None:
        # simple-pid (2.0) keeps its terms in these attributes; set the integral so P + I + D == applied.
        pid: Any = self._pid
        integral = applied - pid._proportional - pid._derivative
        pid._integral = _clamp(integral, self.params.knob_min, self.params.knob_max)
        pid._last_output = applied

    # --- JSON state ---

    _PID_FIELDS = ("_proportional", "_integral", "_derivative", "_last_input", "_last_error", "_last_output")

    def state(self) -> dict[str, Any]:
        pid: Any = self._pid
        return {
            "version": STATE_VERSION,
            "params": self.params.model_dump(mode="json"),
            "knob": self.knob,
            "last_now_s": self.last_now_s,
            "last_error": self.last_error,
            "pid": {name.lstrip("_"): getattr(pid, name) for name in self._PID_FIELDS},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"deadline tuner: unsupported state version {state.get('version')!r}")
        tuner = cls(state["params"])
        tuner.knob = float(state["knob"])
        tuner.last_now_s = state["last_now_s"]
        tuner.last_error = state["last_error"]
        pid: Any = tuner._pid
        for name in cls._PID_FIELDS:
            setattr(pid, name, state["pid"][name.lstrip("_")])
        if tuner.last_now_s is not None:
            tuner._now_s = pid._last_time = tuner.last_now_s
        return tuner
