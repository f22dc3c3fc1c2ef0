"""Arrival processes and rate schedules: empirical rates, burstiness and schedule shapes match the specification.

Tolerances are statistical: counts of a Poisson process have standard deviation sqrt(expected), a renewal
process with gap CV c about c·sqrt(expected); assertions allow 4 standard deviations (and a few percent for
means over tens of thousands of arrivals), so with fixed seeds they pass, and a wrong rate fails by far.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.workloads.arrivals import (
    ArrivalSpec,
    BurstsRate,
    ConstantRate,
    DiurnalRate,
    PiecewiseRate,
    RampRate,
    StepsRate,
    arrival_times,
)


def _times(arrival: ArrivalSpec, rate: object, n: int, seed: int = 0, rate_scale: float = 1.0) -> np.ndarray:
    gen = arrival_times(arrival, rate, np.random.default_rng(seed), rate_scale)  # type: ignore[arg-type]
    return np.array(list(itertools.islice(gen, n)))


def _count(times: np.ndarray, lo_s: float, hi_s: float) -> int:
    return int(((times >= lo_s) & (times < hi_s)).sum())


def _assert_count(observed: int, expected: float, cv: float = 1.0) -> None:
    sd = cv * math.sqrt(expected)
    assert abs(observed - expected) <= 4 * sd + 1, f"observed {observed}, expected {expected:.1f} ± {4 * sd:.1f}"


@pytest.mark.parametrize(
    "arrival", [ArrivalSpec(), ArrivalSpec(process="gamma", cv=0.5), ArrivalSpec(process="gamma", cv=2.0),
                ArrivalSpec(process="regular")], ids=["poisson", "gamma-0.5", "gamma-2", "regular"],
)
def test_mean_rate_matches_target_within_5_percent(arrival: ArrivalSpec) -> None:
    rate_rps = 20.0
    times = _times(arrival, rate_rps, 20_000)
    assert np.all(np.diff(times) >= 0)
    empirical_rps = len(times) / times[-1]
    assert empirical_rps == pytest.approx(rate_rps, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 3.0])
def test_gamma_gap_cv_matches(cv: float) -> None:
    gaps = np.diff(_times(ArrivalSpec(process="gamma", cv=cv), 5.0, 50_000, seed=3))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)


def test_poisson_cv_is_one_and_regular_cv_is_zero() -> None:
    poisson_gaps = np.diff(_times(ArrivalSpec(), 5.0, 50_000))
    assert poisson_gaps.std() / poisson_gaps.mean() == pytest.approx(1.0, rel=0.05)
    regular_gaps = np.diff(_times(ArrivalSpec(process="regular"), 5.0, 1000))
    assert np.allclose(regular_gaps, 0.2)


def test_rate_scale_scales_the_rate() -> None:
    times = _times(ArrivalSpec(process="regular"), 10.0, 100, rate_scale=0.25)
    assert np.allclose(np.diff(times), 1 / 2.5)


def test_steps_change_the_local_rate() -> None:
    sched = StepsRate(steps=[(0.0, 2.0), (100.0, 20.0), (200.0, 0.0), (300.0, 5.0)])
    times = _times(ArrivalSpec(), sched, 10_000, seed=1)
    _assert_count(_count(times, 0, 100), 200)
    _assert_count(_count(times, 100, 200), 2000)
    assert _count(times, 200, 300) == 0
    _assert_count(_count(times, 300, 500), 1000)


def test_steps_with_gamma_keep_the_local_rate() -> None:
    sched = StepsRate(steps=[(0.0, 5.0), (200.0, 25.0)])
    times = _times(ArrivalSpec(process="gamma", cv=2.0), sched, 20_000, seed=2)
    _assert_count(_count(times, 0, 200), 1000, cv=2.0)
    _assert_count(_count(times, 200, 400), 5000, cv=2.0)


def test_a_schedule_that_stops_ends_the_stream() -> None:
    sched = StepsRate(steps=[(0.0, 10.0), (50.0, 0.0)])
    times = _times(ArrivalSpec(), sched, 100_000)
    assert len(times) < 100_000 and times[-1] < 50.0
    _assert_count(len(times), 500)


def test_ramp_follows_the_linear_rate() -> None:
    sched = RampRate(from_rps=2.0, to_rps=22.0, over_s=200.0, start_s=50.0)
    times = _times(ArrivalSpec(), sched, 20_000, seed=4)
    _assert_count(_count(times, 0, 50), 100)  # before the ramp: from_rps
    for lo in range(50, 250, 40):  # during: the integral of the linear rate over each window
        mid = lo + 20 - 50
        _assert_count(_count(times, lo, lo + 40), 40 * (2.0 + 20.0 * mid / 200.0))
    _assert_count(_count(times, 250, 350), 2200)  # after: to_rps


def test_diurnal_follows_the_sinusoid() -> None:
    sched = DiurnalRate(mean_rps=10.0, amplitude_rps=8.0, period_s=400.0, phase_s=30.0)
    times = _times(ArrivalSpec(), sched, 40_000, seed=5)
    w = 2 * math.pi / 400.0

    def expected(lo: float, hi: float) -> float:
        return 10.0 * (hi - lo) + 8.0 / w * (math.cos(w * (lo + 30.0)) - math.cos(w * (hi + 30.0)))

    for lo in range(0, 1600, 50):
        _assert_count(_count(times, lo, lo + 50), expected(lo, lo + 50))
    peak = 100.0 - 30.0  # sin is 1 at t + phase = period / 4
    assert _count(times, peak - 25, peak + 25) > 3 * _count(times, peak + 175, peak + 225)


def test_bursts_raise_the_rate_inside_bursts_only() -> None:
    sched = BurstsRate(base_rps=2.0, burst_rps=30.0, burst_length_s=10.0, burst_every_s=60.0, first_burst_s=45.0)
    times = _times(ArrivalSpec(), sched, 20_000, seed=6)
    _assert_count(_count(times, 0, 45), 90)  # lead-in at the base rate
    for n in range(10):
        start = 45.0 + 60.0 * n
        _assert_count(_count(times, start, start + 10), 300)
        _assert_count(_count(times, start + 10, start + 60), 100)


def test_rate_models_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        DiurnalRate(mean_rps=1.0, amplitude_rps=2.0)
    with pytest.raises(ValueError, match="start at 0"):
        StepsRate(steps=[(5.0, 1.0)])
    with pytest.raises(ValueError, match="increase"):
        StepsRate(steps=[(0.0, 1.0), (10.0, 2.0), (10.0, 3.0)])
    with pytest.raises(ValueError, match="burst_length_s"):
        BurstsRate(base_rps=1, burst_rps=5, burst_length_s=20, burst_every_s=10)
    with pytest.raises(ValueError):
        ConstantRate(rate_rps=0.0)
    with pytest.raises(ValueError, match="only to process='gamma'"):
        ArrivalSpec(process="poisson", cv=2.0)


@settings(max_examples=60, deadline=None)
@given(
    widths=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=8),
    rates=st.lists(st.floats(0.0, 50.0), min_size=9, max_size=9),
    periodic=st.booleans(),
    lead_in_s=st.floats(0.0, 20.0),
    u=st.lists(st.floats(0.0, 5000.0), min_size=1, max_size=20),
)
def test_piecewise_inverse_inverts_cumulative(
    widths: list[float], rates: list[float], periodic: bool, lead_in_s: float, u: list[float]
) -> None:
    knots = np.concatenate(([0.0], np.cumsum(widths)[:-1]))
    r = np.array(rates[: len(knots)])
    r[-1] = max(r[-1], 0.5)  # the rate after the last knot (or in the period) must let arrivals continue
    table = PiecewiseRate(knots, r, float(np.sum(widths)) if periodic else None, lead_in_s, 3.0)
    t = table.inverse(np.array(u))
    assert np.all(np.isfinite(t))
    assert np.allclose(table.cumulative(t), u, rtol=1e-9, atol=1e-6)
    assert np.all(np.diff(table.inverse(np.sort(u))) >= -1e-9)  # monotone
