"""Fit the step-time model's coefficients to measured step timings.

The model is ``overhead + max(compute(x), memory(x), launch(x))`` with every coefficient non-negative (see
``step_time.py``). Two forms are fitted:

- ``roofline``: the datasheet's form, ``overhead + max(compute, memory)`` (six coefficients; the launch roof
  and the per-prefill-context-token cost stay 0);
- ``launch``: all ten coefficients: the launch roof, and the batched path's fixed cost (added outside the max,
  like the overhead, to every step of two or more tokens).

A max of linear models is fitted by alternating: assign each row to the regime the current coefficients say
dominates it, fit all coefficients at once by non-negative least squares (scikit-learn's
``LinearRegression(positive=True)``) with each row's regime columns switched on, repeat until the assignment
stops changing.

Details that matter on real measurements:

- The loss is the squared *relative* error, sum ((pred - y) / y)^2: step times span orders of magnitude (a
  decode step against a long prefill), and the reported figure of merit is the percentage error (MAPE).
- The overhead is one coefficient shared by every regime, as in the model (not one intercept per regime).
- Alternation can settle in a poor assignment, so it starts from several: the ``initial`` profile's regimes,
  every row in one regime (each regime in turn), each regime fitted alone to all rows (a row goes to the
  highest line), and a few seeded random assignments; the best fit seen wins (the result is deterministic).
- A regime with no rows keeps ``initial``'s coefficients (reported in ``FitReport.from_initial``), and a
  coefficient the rows cannot separate from the others (e.g. per-token and per-sequence cost when every row is
  a decode step, where both counts are equal) is named in ``FitReport.unidentified``: its split is arbitrary,
  the fitted predictions for rows like these are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from schedctl.sim.step_time import StepBatch, StepTimeProfile

Form = Literal["roofline", "launch"]
FORMS: tuple[Form, ...] = ("roofline", "launch")
# StepTimeProfile's coefficient fields, in design-matrix column order: the roofline's six, then the launch form's
COEFFICIENTS = (
    "overhead_s", "s_per_new_token", "s_per_seq", "s_per_attn_ctx_token", "memory_base_s", "s_per_kv_token",
)
LAUNCH_COEFFICIENTS = ("s_per_prefill_ctx_token", "prefill_launch_s", "prefill_ctx_launch_s", "batched_step_s")
ALL_COEFFICIENTS = COEFFICIENTS + LAUNCH_COEFFICIENTS
_REGIMES: dict[Form, tuple[tuple[int, ...], ...]] = {  # columns of each regime: compute, memory[, launch]
    "roofline": ((1, 2, 3), (4, 5)),
    "launch": ((1, 2, 3, 6), (4, 5), (7, 8)),
}
_MEMORY_BASE = 4  # column of memory_base_s
_ALWAYS: dict[Form, tuple[int, ...]] = {"roofline": (0,), "launch": (0, 9)}  # columns outside the max: added
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
    form: Form = "roofline"
    launch_bound_rows: int = 0  # rows the fitted profile calls bound by launching a prefill's kernels


def design_matrix(batches: Sequence[StepBatch]) -> np.ndarray:
    """One row per batch, one column per coefficient in :data:`ALL_COEFFICIENTS` order."""
    return np.array(
        [[1.0, b.new_tokens, b.seqs, b.attn_ctx_tokens, 1.0, b.kv_tokens, b.prefill_ctx_tokens,
          float(b.prefill_seqs > 0), float(b.prefill_seqs > 0 and b.prefill_ctx_tokens > 0),
          float(b.new_tokens >= 2)] for b in batches],
        dtype=float,
    ).reshape(-1, len(ALL_COEFFICIENTS))


def _coef(profile: StepTimeProfile) -> np.ndarray:
    return np.array([getattr(profile, name) for name in ALL_COEFFICIENTS], dtype=float)


def _roofs(c: np.ndarray, x: np.ndarray, form: Form = "launch") -> np.ndarray:
    """(regime, row) values of each roof (without the overhead)."""
    return np.array([x[:, list(cols)] @ c[list(cols)] for cols in _REGIMES[form]])


def predict_s(profile: StepTimeProfile, x: np.ndarray) -> np.ndarray:
    """Step seconds of every row of a design matrix (same formula as ``StepTimeModel.step_s``)."""
    c = _coef(profile)
    return x[:, [0, 9]] @ c[[0, 9]] + _roofs(c, x).max(axis=0)


def _regime_design(x: np.ndarray, assign: np.ndarray, form: Form) -> np.ndarray:
    """The design with each row's columns of the regimes it is not in zeroed."""
    xr = x.copy()
    for r, cols in enumerate(_REGIMES[form]):
        xr[np.ix_(assign != r, list(cols))] = 0.0
    for col in range(1, len(ALL_COEFFICIENTS)):
        if col not in _ALWAYS[form] and not any(col in cols for cols in _REGIMES[form]):
            xr[:, col] = 0.0
    return xr


def _with_prior(xr: np.ndarray, y: np.ndarray, prior: tuple[float, float]) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Rows, times and row weights with the prior's pseudo-row appended: weight * (memory_base_s / value - 1)."""
    weight, value = prior
    w = np.ones(len(y))
    if weight <= 0 or value <= 0:
        return xr, y, w
    row = np.zeros((1, xr.shape[1]))
    row[0, _MEMORY_BASE] = 1.0
    return np.vstack([xr, row]), np.append(y, value), np.append(w, weight)


def _solve(xr: np.ndarray, y: np.ndarray, active: list[int], prior: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Non-negative least squares of relative error over the ``active`` columns (the rest stay 0), with the
    ``prior`` (weight, datasheet weight-read seconds) on ``memory_base_s`` when that column is active."""
    if _MEMORY_BASE in active:
        xr, y, w = _with_prior(xr, y, prior)
    else:
        w = np.ones(len(y))
    xs = xr[:, active] / y[:, None] * w[:, None]  # (x.b - y)/y = (x/y).b - 1
    scale = np.linalg.norm(xs, axis=0)
    scale[scale == 0] = 1.0
    from sklearn.linear_model import LinearRegression  # imported here: scikit-learn takes seconds to import

    reg = LinearRegression(positive=True, fit_intercept=False).fit(xs / scale, w)
    out = np.zeros(len(ALL_COEFFICIENTS))
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
            out.append(ALL_COEFFICIENTS[col])
    return tuple(out)


def _active(assign: np.ndarray, form: Form) -> list[int]:
    """The overhead and the columns of every regime that has rows."""
    return [*_ALWAYS[form]] + [c for r, cols in enumerate(_REGIMES[form]) if (assign == r).any() for c in cols]


@dataclass
class _Fit:
    profile: StepTimeProfile
    assign: np.ndarray
    loss: float
    iterations: int


def _fit_from(x: np.ndarray, y: np.ndarray, start: np.ndarray, initial: StepTimeProfile, source: str,
              max_iter: int, form: Form, prior: tuple[float, float]) -> _Fit:
    init = _coef(initial)
    assign = start.copy()
    best: _Fit | None = None
    for it in range(1, max_iter + 1):
        active = _active(assign, form)
        coef = _solve(_regime_design(x, assign, form), y, active, prior)
        for cols in _REGIMES[form]:
            for col in cols:
                if col not in active:
                    coef[col] = init[col]  # a regime without rows keeps the initial coefficients
        profile = StepTimeProfile(**dict(zip(ALL_COEFFICIENTS, coef.tolist(), strict=True)), source=source)
        rel = predict_s(profile, x) / y - 1.0
        loss = float(rel @ rel)
        if prior[0] > 0 and prior[1] > 0:
            loss += (prior[0] * (coef[_MEMORY_BASE] / prior[1] - 1.0)) ** 2
        if best is None or loss < best.loss:
            best = _Fit(profile, assign.copy(), loss, it)
        new_assign = np.argmax(_roofs(_coef(profile), x, form), axis=0)
        if np.array_equal(new_assign, assign):
            break
        assign = new_assign
    assert best is not None
    return best


def fit_step_profile(
    batches: Sequence[StepBatch], seconds: Sequence[float], initial: StepTimeProfile, source: str, max_iter: int = 50,
    form: Form = "roofline", prior_weight: float = 0.0,
) -> tuple[StepTimeProfile, FitReport]:
    """Fit coefficients of ``form`` to (batch features, measured seconds) rows; ``initial`` seeds the regimes.

    ``prior_weight`` > 0 pulls ``memory_base_s`` toward ``initial``'s (the datasheet's weight-read time): the
    loss gains ``(prior_weight * (memory_base_s / initial.memory_base_s - 1))^2``, as one more row would. Decode
    rows cannot tell a fixed per-step overhead from the time to read the weights (both are constant); the prior
    puts that time where the datasheet says, so a profile carried to another GPU scales it with the bandwidth.

    Raises ValueError with fewer than 4 rows, a row count that differs from the time count, or a time that is
    not a positive finite number of seconds.
    """
    if form not in _REGIMES:
        raise ValueError(f"unknown model form {form!r} (one of {', '.join(FORMS)})")
    if len(batches) != len(seconds) or len(batches) < 4:
        raise ValueError(f"need at least 4 rows with one time each, got {len(batches)} rows / {len(seconds)} times")
    y = np.asarray(seconds, dtype=float)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("step times must be positive finite seconds")
    x = design_matrix(batches)
    regimes = _REGIMES[form]
    if form == "roofline":  # the launch form's coefficients are not part of this form: start (and stay) at 0
        initial = initial.model_copy(update={c: 0.0 for c in LAUNCH_COEFFICIENTS})
    # each regime fitted alone to every row; a row starts in the regime whose line is highest there (the max)
    alone = np.array([x @ _solve(x, y, [*_ALWAYS[form], *cols]) for cols in regimes])
    rng = np.random.default_rng(0)
    starts = [
        np.argmax(_roofs(_coef(initial), x, form), axis=0),
        *(np.full(len(y), r) for r in range(len(regimes))),
        np.argmax(alone, axis=0),
        *(rng.integers(0, len(regimes), len(y)) for _ in range(_RANDOM_STARTS)),
    ]
    prior = (prior_weight, initial.memory_base_s)
    fits = [_fit_from(x, y, s, initial, source, max_iter, form, prior) for s in starts]
    best = min(fits, key=lambda f: f.loss)  # ties: the earliest start (the initial regimes)
    active = _active(best.assign, form)
    kept = tuple(ALL_COEFFICIENTS[c] for cols in regimes for c in cols if c not in active)
    ape = np.abs(predict_s(best.profile, x) - y) / y
    bound = np.argmax(_roofs(_coef(best.profile), x, form), axis=0)
    report = FitReport(
        rows=len(y), mape=float(ape.mean()), worst_ape=float(ape.max()), compute_bound_rows=int(np.sum(bound == 0)),
        iterations=best.iterations, median_ape=float(np.median(ape)),
        unidentified=_unidentified(_regime_design(x, best.assign, form), y, active), from_initial=kept, form=form,
        launch_bound_rows=int(np.sum(bound == 2)),
    )
    return best.profile, report


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-back) row indices: a seeded random ``fraction`` held back (at least 1 if fraction > 0)."""
    if not 0 <= fraction < 1:
        raise ValueError("the held-back fraction must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    k = 0 if fraction == 0 else max(1, round(n * fraction))
    return np.sort(order[k:]), np.sort(order[:k])


def held_back_ape(batches: Sequence[StepBatch], seconds: Sequence[float], initial: StepTimeProfile, form: Form,
                  fraction: float = 0.25, splits: int = 5, prior_weight: float = 0.0) -> np.ndarray:
    """Absolute percentage errors on held-back rows: ``splits`` seeded splits (seeds 0..), each holding back
    ``fraction`` of the rows, fitted on the others; the errors of every split, concatenated."""
    y = np.asarray(seconds, dtype=float)
    x = design_matrix(batches)
    out = []
    for seed in range(splits):
        train, held = holdout_split(len(y), fraction, seed)
        if len(held) == 0 or len(train) < 4:
            continue
        profile, _ = fit_step_profile([batches[i] for i in train], y[train].tolist(), initial, "cv", form=form,
                                      prior_weight=prior_weight)
        out.append(np.abs(predict_s(profile, x[held]) - y[held]) / y[held])
    return np.concatenate(out) if out else np.zeros(0)


def choose_form(batches: Sequence[StepBatch], seconds: Sequence[float], initial: StepTimeProfile,
                splits: int = 5, prior_weight: float = 0.0) -> tuple[Form, dict[str, float]]:
    """The form with the lower mean error on held-back rows (a quarter, ``splits`` seeded splits of these rows);
    the roofline on a tie or when too few rows to hold any back. Also returns each form's held-back MAPE."""
    mape: dict[str, float] = {}
    for form in FORMS:
        ape = held_back_ape(batches, seconds, initial, form, splits=splits, prior_weight=prior_weight)
        mape[form] = float(ape.mean()) if len(ape) else float("inf")
    best: Form = "launch" if mape["launch"] < mape["roofline"] else "roofline"
    return best, mape
