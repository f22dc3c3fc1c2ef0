"""Fit the step-time model's coefficients to measured step timings.

The model is ``overhead + max(compute(x), memory(x))`` with every coefficient non-negative (see
``step_time.py``). A max of two linear models is fitted by alternating: assign each row to the regime the
current coefficients say dominates it, fit each regime by non-negative least squares (scikit-learn's
``LinearRegression(positive=True)``), repeat until the assignment stops changing. The overhead is the compute
regime's intercept; the memory regime's intercept is overhead + weight-read time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LinearRegression

from schedctl.sim.step_time import StepBatch, StepTimeModel, StepTimeProfile


@dataclass(frozen=True)
class FitReport:
    rows: int
    mape: float  # mean absolute percentage error over the rows, as a fraction
    worst_ape: float  # largest absolute percentage error, as a fraction
    compute_bound_rows: int
    iterations: int


def _features(batches: Sequence[StepBatch]) -> tuple[np.ndarray, np.ndarray]:
    comp = np.array([[b.new_tokens, b.seqs, b.attn_ctx_tokens] for b in batches], dtype=float)
    mem = np.array([[b.kv_tokens] for b in batches], dtype=float)
    return comp, mem


def _nnls(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    if len(y) == 0:
        return 0.0, np.zeros(x.shape[1])
    reg = LinearRegression(positive=True).fit(x, y)
    return max(0.0, float(reg.intercept_)), np.asarray(reg.coef_, dtype=float)


def fit_step_profile(
    batches: Sequence[StepBatch], seconds: Sequence[float], initial: StepTimeProfile, source: str, max_iter: int = 50
) -> tuple[StepTimeProfile, FitReport]:
    """Fit coefficients to (batch features, measured seconds) rows, starting from ``initial``'s regimes."""
    if len(batches) != len(seconds) or len(batches) < 4:
        raise ValueError(f"need at least 4 rows with one time each, got {len(batches)} rows / {len(seconds)} times")
    y = np.asarray(seconds, dtype=float)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("step times must be positive finite seconds")
    comp_x, mem_x = _features(batches)
    model = StepTimeModel(initial)
    compute_bound = np.array([model.terms(b)[0] >= model.terms(b)[1] for b in batches])
    profile = initial
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        ov, (cn, cs, ca) = _nnls(comp_x[compute_bound], y[compute_bound])
        mem_icpt, (mk,) = _nnls(mem_x[~compute_bound], y[~compute_bound])
        if not compute_bound.any():
            ov = initial.overhead_s
            cn, cs, ca = initial.s_per_new_token, initial.s_per_seq, initial.s_per_attn_ctx_token
        if compute_bound.all():
            mem_icpt, mk = initial.overhead_s + initial.memory_base_s, initial.s_per_kv_token
        profile = StepTimeProfile(
            overhead_s=ov, s_per_new_token=cn, s_per_seq=cs, s_per_attn_ctx_token=ca,
            memory_base_s=max(0.0, mem_icpt - ov), s_per_kv_token=mk, source=source,
        )
        model = StepTimeModel(profile)
        new_bound = np.array([model.terms(b)[0] >= model.terms(b)[1] for b in batches])
        if np.array_equal(new_bound, compute_bound):
            break
        compute_bound = new_bound
    pred = np.array([model.step_s(b) for b in batches])
    ape = np.abs(pred - y) / y
    return profile, FitReport(len(y), float(ape.mean()), float(ape.max()), int(compute_bound.sum()), it)
