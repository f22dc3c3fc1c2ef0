"""Arrival processes and rate schedules: when requests arrive.

A *rate schedule* says how many requests per second arrive on average at each moment (constant, steps, ramp,
diurnal, bursts). An *arrival process* says how irregular the arrivals are around that rate (Poisson, gamma with
a burstiness CV, regular spacing). Any process works with any schedule, by time rescaling: the process is first
drawn at unit rate (epochs U_1 < U_2 < ... of a renewal process whose gaps have mean 1), then each epoch is mapped
through the inverse of the cumulative rate Λ(t) = ∫_0^t λ(s) ds, so t_i = Λ⁻¹(U_i). For Poisson this is exactly
the non-homogeneous Poisson process with rate λ(t); for gamma and regular it keeps the local rate λ(t) and the
local coefficient of variation of the gaps.

Every schedule is reduced to one form, :class:`PiecewiseRate` (a rate that is constant on intervals, optionally
repeating with a period), whose Λ and Λ⁻¹ are exact and vectorised. Smooth schedules (ramp, diurnal) are cut into
short pieces whose rate is the exact average over the piece, so Λ is exact at every knot and off by a negligible
amount in between. Arrivals are drawn in numpy chunks and handed out one float at a time (lazy, cheap).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_CHUNK = 4096  # arrivals drawn per numpy call
_SMOOTH_PIECES = 1024  # pieces per ramp / per diurnal period


# --- the one exact form every schedule reduces to -------------------------------------------------------------


@dataclass(frozen=True)
class PiecewiseRate:
    """λ(t) = rates_rps[i] on [knots_s[i], knots_s[i+1]), measured from lead_in_s.

    Without a period the last piece extends to infinity; with one, the pattern on [0, period_s) repeats forever.
    ``knots_s`` starts at 0 and increases strictly. Before ``lead_in_s`` the rate is ``lead_in_rps``.
    """

    knots_s: np.ndarray
    rates_rps: np.ndarray
    period_s: float | None = None
    lead_in_s: float = 0.0
    lead_in_rps: float = 0.0

    @cached_property
    def _cum(self) -> np.ndarray:  # Λ at each knot, from the end of the lead-in
        widths = np.diff(self.knots_s)
        return np.concatenate(([0.0], np.cumsum(widths * self.rates_rps[:-1])))

    def _per_period(self) -> float:
        assert self.period_s is not None
        return float(self._cum[-1] + (self.period_s - self.knots_s[-1]) * self.rates_rps[-1])

    def cumulative(self, t_s: np.ndarray) -> np.ndarray:
        """Λ(t): expected number of arrivals in [0, t)."""
        t_all = np.asarray(t_s, dtype=float)
        t = np.maximum(t_all - self.lead_in_s, 0.0)
        base = np.minimum(t_all, self.lead_in_s) * self.lead_in_rps
        if self.period_s is not None:
            n = np.floor(t / self.period_s)
            base = base + n * self._per_period()
            t = t - n * self.period_s
        i = np.searchsorted(self.knots_s, t, side="right") - 1
        return base + self._cum[i] + (t - self.knots_s[i]) * self.rates_rps[i]

    def inverse(self, u_all: np.ndarray) -> np.ndarray:
        """Λ⁻¹(u): the time at which u arrivals are expected; +inf past the end of a schedule that stops."""
        u_all = np.asarray(u_all, dtype=float)
        lead_u = self.lead_in_s * self.lead_in_rps
        u = np.maximum(u_all - lead_u, 0.0)
        cum = self._cum
        offset_s = np.full_like(u, self.lead_in_s)
        if self.period_s is not None:
            n = np.floor(u / self._per_period())
            offset_s += n * self.period_s
            u = u - n * self._per_period()
        i = np.searchsorted(cum, u, side="right") - 1
        rate = self.rates_rps[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = offset_s + self.knots_s[i] + np.where(rate > 0, (u - cum[i]) / rate, np.inf)
            in_lead = u_all < lead_u
            if in_lead.any():
                t = np.where(in_lead, u_all / self.lead_in_rps, t)
        return t


def _piecewise(
    knots_s: list[float],
    rates_rps: list[float],
    period_s: float | None = None,
    lead_in_s: float = 0.0,
    lead_in_rps: float = 0.0,
) -> PiecewiseRate:
    """Build a PiecewiseRate, dropping empty pieces (a knot equal to the next one, or at the period's end)."""
    end = len(knots_s)
    keep = [i for i in range(end) if (knots_s[i + 1] if i + 1 < end else math.inf) > knots_s[i]]
    if period_s is not None:
        keep = [i for i in keep if knots_s[i] < period_s]
    return PiecewiseRate(
        np.array([knots_s[i] for i in keep]), np.array([rates_rps[i] for i in keep]), period_s, lead_in_s, lead_in_rps
    )


def _smooth(
    cumulative: Callable[[float], float], start_s: float, end_s: float, pieces: int
) -> tuple[list[float], list[float]]:
    """Knots and exact average rates of a smooth Λ over [start_s, end_s]."""
    knots = np.linspace(start_s, end_s, pieces + 1)
    cum = np.array([cumulative(float(k)) for k in knots])
    return knots[:-1].tolist(), (np.diff(cum) / np.diff(knots)).tolist()


# --- rate schedules (the typed, file- and CLI-facing form) ----------------------------------------------------

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class ConstantRate(BaseModel):
    """A constant rate."""

    model_config = _FROZEN
    kind: Literal["constant"] = "constant"
    rate_rps: float = Field(gt=0, allow_inf_nan=False, description="requests per second")

    def piecewise(self) -> PiecewiseRate:
        return _piecewise([0.0], [self.rate_rps])


class StepsRate(BaseModel):
    """Piecewise-constant rate: each (start_s, rate_rps) holds until the next start; the last holds forever."""

    model_config = _FROZEN
    kind: Literal["steps"] = "steps"
    steps: list[tuple[float, float]] = Field(
        min_length=1, description="(start_s, rate_rps) pairs; the first starts at 0, starts increase"
    )

    @model_validator(mode="after")
    def _check(self) -> StepsRate:
        starts = [s for s, _ in self.steps]
        if starts[0] != 0:
            raise ValueError(f"the first step must start at 0 s, got {starts[0]}")
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError("step start times must increase strictly")
        rates = [r for _, r in self.steps]
        if any(r < 0 or not math.isfinite(r) for r in rates) or max(rates) <= 0:
            raise ValueError("step rates must be finite and >= 0, and at least one > 0")
        return self

    def piecewise(self) -> PiecewiseRate:
        return _piecewise([s for s, _ in self.steps], [r for _, r in self.steps])


class RampRate(BaseModel):
    """from_rps until start_s, then a linear ramp to to_rps over over_s seconds, then to_rps forever."""

    model_config = _FROZEN
    kind: Literal["ramp"] = "ramp"
    from_rps: float = Field(ge=0, allow_inf_nan=False)
    to_rps: float = Field(ge=0, allow_inf_nan=False)
    over_s: float = Field(gt=0, allow_inf_nan=False, description="ramp duration")
    start_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="when the ramp starts")

    @model_validator(mode="after")
    def _check(self) -> RampRate:
        if self.to_rps <= 0:
            raise ValueError("to_rps must be > 0 (the rate it ends at holds forever)")
        return self

    def _cumulative_in_ramp(self, t_s: float) -> float:
        x = t_s - self.start_s
        return self.from_rps * x + (self.to_rps - self.from_rps) * x * x / (2 * self.over_s)

    def piecewise(self) -> PiecewiseRate:
        knots, rates = _smooth(self._cumulative_in_ramp, self.start_s, self.start_s + self.over_s, _SMOOTH_PIECES)
        return _piecewise([0.0, *knots, self.start_s + self.over_s], [self.from_rps, *rates, self.to_rps])


class DiurnalRate(BaseModel):
    """λ(t) = mean_rps + amplitude_rps · sin(2π (t + phase_s) / period_s)."""

    model_config = _FROZEN
    kind: Literal["diurnal"] = "diurnal"
    mean_rps: float = Field(gt=0, allow_inf_nan=False)
    amplitude_rps: float = Field(ge=0, allow_inf_nan=False, description="at most mean_rps")
    period_s: float = Field(86400.0, gt=0, allow_inf_nan=False)
    phase_s: float = Field(0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> DiurnalRate:
        if self.amplitude_rps > self.mean_rps:
            raise ValueError(f"amplitude_rps ({self.amplitude_rps}) exceeds mean_rps ({self.mean_rps}): "
                             "the rate would go negative")
        return self

    def _cumulative(self, t_s: float) -> float:
        w = 2 * math.pi / self.period_s
        return self.mean_rps * t_s + self.amplitude_rps / w * (
            math.cos(w * self.phase_s) - math.cos(w * (t_s + self.phase_s))
        )

    def piecewise(self) -> PiecewiseRate:
        knots, rates = _smooth(self._cumulative, 0.0, self.period_s, _SMOOTH_PIECES)
        return _piecewise(knots, rates, self.period_s)


class BurstsRate(BaseModel):
    """base_rps, except during bursts of burst_length_s at burst_rps (the rate during a burst, not an addition).

    Bursts start at first_burst_s and then every burst_every_s.
    """

    model_config = _FROZEN
    kind: Literal["bursts"] = "bursts"
    base_rps: float = Field(ge=0, allow_inf_nan=False)
    burst_rps: float = Field(gt=0, allow_inf_nan=False, description="rate during a burst")
    burst_length_s: float = Field(gt=0, allow_inf_nan=False)
    burst_every_s: float = Field(gt=0, allow_inf_nan=False, description="spacing of burst starts")
    first_burst_s: float = Field(0.0, ge=0, allow_inf_nan=False, description="start of the first burst")

    @model_validator(mode="after")
    def _check(self) -> BurstsRate:
        if self.burst_length_s > self.burst_every_s:
            raise ValueError("burst_length_s must not exceed burst_every_s")
        return self

    def piecewise(self) -> PiecewiseRate:
        # Before the first burst: base rate; from it on, the period [burst, base] repeats.
        return _piecewise(
            [0.0, self.burst_length_s], [self.burst_rps, self.base_rps], self.burst_every_s,
            lead_in_s=self.first_burst_s, lead_in_rps=self.base_rps,
        )


RateSchedule = Annotated[
    ConstantRate | StepsRate | RampRate | DiurnalRate | BurstsRate, Field(discriminator="kind")
]


def as_schedule(rate: RateSchedule | float) -> RateSchedule:
    """A number is a constant rate in requests per second."""
    if isinstance(rate, int | float):
        return ConstantRate(rate_rps=float(rate))
    return rate


# --- arrival processes -----------------------------------------------------------------------------------------


class ArrivalSpec(BaseModel):
    """How irregular arrivals are around the scheduled rate.

    poisson: exponential gaps (CV 1). gamma: gamma gaps with coefficient of variation ``cv`` (cv > 1 burstier than
    Poisson, cv < 1 smoother; cv = 1 is Poisson). regular: equal gaps in rescaled time (CV 0).
    """

    model_config = _FROZEN
    process: Literal["poisson", "gamma", "regular"] = "poisson"
    cv: float = Field(1.0, gt=0, allow_inf_nan=False, description="coefficient of variation of gaps (gamma only)")

    @model_validator(mode="after")
    def _check(self) -> ArrivalSpec:
        if self.process != "gamma" and self.cv != 1.0:
            raise ValueError(f"cv applies only to process='gamma' (process is {self.process!r})")
        return self


def unit_gaps(arrival: ArrivalSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """n gaps of the unit-rate (mean gap 1) renewal process."""
    if arrival.process == "poisson":
        return rng.exponential(1.0, n)
    if arrival.process == "gamma":
        shape = 1.0 / (arrival.cv * arrival.cv)
        return rng.gamma(shape, 1.0 / shape, n)
    return np.ones(n)


def arrival_times(
    arrival: ArrivalSpec, rate: RateSchedule | float, rng: np.random.Generator, rate_scale: float = 1.0
) -> Iterator[float]:
    """Arrival times in seconds, increasing, forever (or until a schedule that stops runs dry).

    ``rate_scale`` multiplies the schedule (a chat workload draws session starts at rate / turns per session).
    """
    table = as_schedule(rate).piecewise()
    u_end = 0.0
    while True:
        u = u_end + np.cumsum(unit_gaps(arrival, rng, _CHUNK))
        u_end = float(u[-1])
        t = table.inverse(u / rate_scale)
        finite = t[np.isfinite(t)]
        yield from finite.tolist()
        if finite.size < t.size:
            return
