"""fit_step_profile: recovers known coefficients (exactly without noise, closely with it), names what it cannot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.sim.calibrate import neutral_profile
from schedctl.sim.fit import COEFFICIENTS, fit_step_profile
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.step_time import StepBatch, StepTimeModel, StepTimeProfile

DATASHEET = StepTimeProfile.from_datasheet(load_gpu("h100-sxm"), load_model("llama-3.1-8b"))


def grid() -> list[StepBatch]:
    """Prefills with and without cached context, decode batches, and mixed steps: both regimes, all features."""
    out = [StepBatch.from_counts(e, c, 0, 0) for e in (128, 512, 2048, 8192) for c in (0, 1024, 8192)]
    out += [StepBatch.from_counts(0, 0, b, b * c) for b in (1, 8, 32, 128, 256) for c in (256, 2048, 8192)]
    out += [StepBatch.from_counts(e, 0, b, b * 1024) for e in (256, 2048) for b in (16, 64)]
    out += [StepBatch.from_counts(e, 0, 0, 0, prefill_seqs=s) for e, s in ((1024, 8), (4096, 32))]
    return out


def times(profile: StepTimeProfile, batches: list[StepBatch], noise: float = 0.0, seed: int = 0) -> list[float]:
    model = StepTimeModel(profile)
    rng = np.random.default_rng(seed)
    return [model.step_s(b) * (1 + noise * rng.standard_normal()) for b in batches]


@pytest.mark.parametrize("initial", [DATASHEET, neutral_profile()], ids=["datasheet-start", "neutral-start"])
def test_recovers_known_coefficients_from_noisy_rows(initial: StepTimeProfile) -> None:
    batches = grid()
    profile, report = fit_step_profile(batches, times(DATASHEET, batches, noise=0.03), initial, "synthetic")
    assert report.mape < 0.035
    # the coefficients that move the step time by far more than the noise come back closely
    for name, tol in (("s_per_new_token", 0.03), ("s_per_kv_token", 0.03), ("memory_base_s", 0.05),
                      ("s_per_attn_ctx_token", 0.10)):
        assert getattr(profile, name) == pytest.approx(getattr(DATASHEET, name), rel=tol), name
    # both regimes are represented, as in the truth (rows near the ridge may go either way under noise)
    truth = StepTimeModel(DATASHEET)
    assert abs(report.compute_bound_rows - sum(truth.terms(b)[0] >= truth.terms(b)[1] for b in batches)) <= 2
    assert report.unidentified == () and report.from_initial == ()
    assert profile.source == "synthetic"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-2.0, 2.0), min_size=6, max_size=6))
def test_exact_rows_are_fitted_exactly_from_a_neutral_start(log_mult: list[float]) -> None:
    """Any non-negative profile within e^+-2 of the datasheet's: noise-free rows come back to the last digit."""
    truth = StepTimeProfile(**{c: getattr(DATASHEET, c) * float(np.exp(m))
                               for c, m in zip(COEFFICIENTS, log_mult, strict=True)})
    batches = grid()
    profile, report = fit_step_profile(batches, times(truth, batches), neutral_profile(), "exact")
    assert report.worst_ape < 1e-6
    predicted = [StepTimeModel(profile).step_s(b) for b in batches]
    np.testing.assert_allclose(predicted, times(truth, batches), rtol=1e-6)


def test_relative_error_is_what_is_minimised() -> None:
    """Short decode steps and long prefills weigh alike: a 1 ms step is not sacrificed for a 1 s one."""
    batches = grid()
    y = np.array(times(DATASHEET, batches))
    y[np.argmax(y)] *= 1.5  # one long step is 50% off the model
    _, report = fit_step_profile(batches, list(y), DATASHEET, "outlier")
    assert report.median_ape < 0.01  # the others stay fitted...
    assert report.worst_ape > 0.2  # ...and the outlier stays an outlier


def test_decode_only_rows_name_what_they_cannot_separate() -> None:
    batches = [StepBatch.from_counts(0, 0, b, b * c) for b in (1, 4, 16, 64, 256) for c in (128, 1024, 8192)]
    profile, report = fit_step_profile(batches, times(DATASHEET, batches, noise=0.01), DATASHEET, "decode")
    assert {"s_per_new_token", "s_per_seq"} <= set(report.unidentified)
    assert report.mape < 0.02  # the predictions for such steps are still good, also for unseen ones:
    unseen = StepBatch.from_counts(0, 0, 32, 32 * 4096)
    assert StepTimeModel(profile).step_s(unseen) == pytest.approx(StepTimeModel(DATASHEET).step_s(unseen), rel=0.03)


def test_a_regime_without_rows_keeps_the_initial_coefficients() -> None:
    """Long single-sequence prefills are compute-bound on an H100: nothing to learn the memory terms from."""
    batches = [StepBatch.from_counts(e, c, 0, 0) for e in (512, 1024, 2048, 4096, 8192) for c in (0, 4096)]
    profile, report = fit_step_profile(batches, times(DATASHEET, batches, noise=0.02), DATASHEET, "prefill")
    assert report.compute_bound_rows == report.rows
    assert set(report.from_initial) == {"memory_base_s", "s_per_kv_token"}
    assert (profile.memory_base_s, profile.s_per_kv_token) == (DATASHEET.memory_base_s, DATASHEET.s_per_kv_token)
    # one sequence per step: a per-sequence cost cannot be told from the per-step overhead
    assert set(report.unidentified) == {"overhead_s", "s_per_seq"}
    assert report.mape < 0.03


def test_rejects_too_few_rows_and_bad_times() -> None:
    batches = grid()
    with pytest.raises(ValueError, match="at least 4"):
        fit_step_profile(batches[:3], [0.1, 0.2, 0.3], DATASHEET, "x")
    with pytest.raises(ValueError, match="at least 4"):
        fit_step_profile(batches, [0.1] * (len(batches) - 1), DATASHEET, "x")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite"):
            fit_step_profile(batches[:5], [0.1, 0.1, 0.1, 0.1, bad], DATASHEET, "x")
