"""Fit the step-time model's coefficients to measured step timings.

The model is ``overhead + max(compute(x), memory(x))`` with every coefficient non-negative (see
``step_time.py``). A max of two linear models is fitted by alternating: assign each row to the regime the
current coefficients say dominates it, fit all six coefficients at once by non-negative least squares
(scikit-learn's ``LinearRegression(positive=True)``) with each row's regime columns switched on, repeat until
the assignment stops changing.

Details that matter on real measurements:

- The loss is the squared *relative* error, sum ((pred - y) / y)^2: step times span orders of magnitude (a
  decode step against a long prefill), and the reported figure of merit is the percentage error (MAPE).
- The overhead is one coefficient shared by both regimes, as in the model (not two intercepts).
- Alternation can settle in a poor assignment, so it starts from several: the ``initial`` profile's regimes,
  everything compute-bound, everything memory-bound, each regime fitted alone to all rows (a row goes to the
  higher line), and a few seeded random assignments; the best fit seen wins (the result is deterministic).
- A regime with no rows keeps ``initial``'s coefficients (reported in ``FitReport.from_initial``), and a
  coefficient the rows cannot separate from the others (e.g. per-token and per-sequence cost when every row is
  a decode step, where both counts are equal) is named in ``FitReport.unidentified``: its split is arbitrary,
  the fitted predictions for rows like these are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schedctl.sim.step_time import StepBatch, StepTimeProfile

# StepTimeProfile's coefficient fields, in design-matrix column order
COEFFICIENTS = (
    "overhead_s", "s_per_new_token", "s_per_seq", "s_per_attn_ctx_token", "memory_base_s", "s_per_kv_token",
)
_COMPUTE_COLS = (1, 2, 3)
_MEMORY_COLS = (4, 5)
_RANDOM_STARTS = 8  # extra alternations from seeded random regime assignments


@dataclass(frozen=True)
class FitReport:
    rows: int
    mape: float  # mean absolute percentage error over the rows, as a fraction
    worst_ape: float  # largest absolute percentage error, as a fraction
    compute_bound_rows: int  # rows the fitted profile calls compute-bound
    iterations: int  # alternation rounds of the start that won
    median_ape: float = 0.0
    unidentified: tuple[str, ...] = ()  # coefficients the rows cannot pin down (their split is arbitrary)
    from_initial: tuple[str, ...] = ()  # coefficients kept from ``initial`` (their regime has no rows)


def design_matrix(batches: Sequence[StepBatch]) -> np.ndarray:
    """One row per batch, one column per coefficient in :data:`COEFFICIENTS` order."""
    return np.array(
        [[1.0, b.new_tokens, b.seqs, b.attn_ctx_tokens, 1.0, b.kv_tokens] for b in batches], dtype=float
    ).reshape(-1, len(COEFFICIENTS))


def _coef(profile: StepTimeProfile) -> np.ndarray:
    return np.array([getattr(profile, name) for name in COEFFICIENTS], dtype=float)


def predict_s(profile: StepTimeProfile, x: np.ndarray) -> np.ndarray:
    """Step seconds of every row of a design matrix (same formula as ``StepTimeModel.step_s``)."""
    c = _coef(profile)
    compute = x[:, _COMPUTE_COLS] @ c[list(_COMPUTE_COLS)]
    memory = x[:, 4] * c[4] + x[:, 5] * c[5]
    return c[0] + np.maximum(compute, memory)


def _regime_design(x: np.ndarray, compute_bound: np.ndarray) -> np.ndarray:
    """The design with compute columns zeroed on memory-bound rows and memory columns on compute-bound rows."""
    xr = x.copy()
    xr[~compute_bound, 1:4] = 0.0  # _COMPUTE_COLS
    xr[compute_bound, 4:6] = 0.0  # _MEMORY_COLS
    return xr


def _solve(xr: np.ndarray, y: np.ndarray, active: list[int]) -> np.ndarray:
    """Non-negative least squares of relative error over the ``active`` columns (the rest stay 0)."""
    xs = xr[:, active] / y[:, None]  # (x.b - y)/y = (x/y).b - 1
    scale = np.linalg.norm(xs, axis=0)
    scale[scale == 0] = 1.0
    from sklearn.linear_model import LinearRegression  # imported here: scikit-learn takes seconds to import

    reg = LinearRegression(positive=True, fit_intercept=False).fit(xs / scale, np.ones(len(y)))
    out = np.zeros(len(COEFFICIENTS))
    out[active] = np.maximum(np.asarray(reg.coef_, dtype=float), 0.0) / scale
    return out


def _unidentified(xr: np.ndarray, y: np.ndarray, active: list[int]) -> tuple[str, ...]:
    """Active coefficients whose column is zero or in the span of the other active columns."""
    xs = xr[:, active] / y[:, None]
    norms = np.linalg.norm(xs, axis=0)
    xs = xs / np.where(norms == 0, 1.0, norms)
    full = np.linalg.matrix_rank(xs)
    out = []
    for k, col in enumerate(active):
        rest = np.delete(xs, k, axis=1)
        if norms[k] == 0 or np.linalg.matrix_rank(rest) == full:
            out.append(COEFFICIENTS[col])
    return tuple(out)


@dataclass
class _Fit:
    profile: StepTimeProfile
    compute_bound: np.ndarray
    loss: float
    iterations: int


def _fit_from(
    x: np.ndarray, y: np.ndarray, start: np.ndarray, initial: StepTimeProfile, source: str, max_iter: int
) -> _Fit:
    init = _coef(initial)
    compute_bound = start.copy()
    best: _Fit | None = None
    for it in range(1, max_iter + 1):
        active = [0]
        if compute_bound.any():
            active += list(_COMPUTE_COLS)
        if not compute_bound.all():
            active += list(_MEMORY_COLS)
        coef = _solve(_regime_design(x, compute_bound), y, active)
        for col in range(1, len(COEFFICIENTS)):
            if col not in active:
                coef[col] = init[col]
        profile = StepTimeProfile(**dict(zip(COEFFICIENTS, coef.tolist(), strict=True)), source=source)
        rel = predict_s(profile, x) / y - 1.0
        loss = float(rel @ rel)
        if best is None or loss < best.loss:
            best = _Fit(profile, compute_bound.copy(), loss, it)
        c = _coef(profile)
        new_bound = x[:, _COMPUTE_COLS] @ c[list(_COMPUTE_COLS)] >= x[:, 4] * c[4] + x[:, 5] * c[5]
        if np.array_equal(new_bound, compute_bound):
            break
        compute_bound = new_bound
    assert best is not None
    return best


def fit_step_profile(
    batches: Sequence[StepBatch], seconds: Sequence[float], initial: StepTimeProfile, source: str, max_iter: int = 50
) -> tuple[StepTimeProfile, FitReport]:
    """Fit coefficients to (batch features, measured seconds) rows; ``initial`` seeds the regimes.

    Raises ValueError with fewer than 4 rows, a row count that differs from the time count, or a time that is
    not a positive finite number of seconds.
    """
    if len(batches) != len(seconds) or len(batches) < 4:
        raise ValueError(f"need at least 4 rows with one time each, got {len(batches)} rows / {len(seconds)} times")
    y = np.asarray(seconds, dtype=float)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("step times must be positive finite seconds")
    x = design_matrix(batches)
    c0 = _coef(initial)
    # each regime fitted alone to every row; a row starts in the regime whose line is higher there (the max)
    alone_c = _solve(x, y, [0, *_COMPUTE_COLS])
    alone_m = _solve(x, y, [0, *_MEMORY_COLS])
    rng = np.random.default_rng(0)
    starts = [
        x[:, _COMPUTE_COLS] @ c0[list(_COMPUTE_COLS)] >= x[:, 4] * c0[4] + x[:, 5] * c0[5],
        np.ones(len(y), dtype=bool),
        np.zeros(len(y), dtype=bool),
        x @ alone_c >= x @ alone_m,
        *(rng.random(len(y)) < 0.5 for _ in range(_RANDOM_STARTS)),
    ]
    fits = [_fit_from(x, y, s, initial, source, max_iter) for s in starts]
    best = min(fits, key=lambda f: f.loss)  # ties: the earliest start (the initial regimes)
    bound = best.compute_bound
    active = [0] + (list(_COMPUTE_COLS) if bound.any() else []) + ([] if bound.all() else list(_MEMORY_COLS))
    kept = tuple(COEFFICIENTS[c] for c in range(1, len(COEFFICIENTS)) if c not in active)
    ape = np.abs(predict_s(best.profile, x) - y) / y
    c = _coef(best.profile)
    compute_rows = int(np.sum(x[:, _COMPUTE_COLS] @ c[list(_COMPUTE_COLS)] >= x[:, 4] * c[4] + x[:, 5] * c[5]))
    report = FitReport(
        rows=len(y), mape=float(ape.mean()), worst_ape=float(ape.max()), compute_bound_rows=compute_rows,
        iterations=best.iterations, median_ape=float(np.median(ape)),
        unidentified=_unidentified(_regime_design(x, bound), y, active), from_initial=kept,
    )
    return best.profile, report
