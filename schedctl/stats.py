"""Latency distributions from raw samples or histogram deltas, and their quantiles.

One place for the quantile arithmetic used by the simulator's summaries, the engine adapters' windows and the
controller's objective. Raw samples use numpy's linear-interpolation quantile; histograms (Prometheus
cumulative buckets turned into per-bucket counts) interpolate linearly inside the bucket, as Prometheus'
``histogram_quantile`` does. Depends on nothing else in schedctl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


def quantile(
    samples: Sequence[float] | np.ndarray, q: float, weights: Sequence[float] | np.ndarray | None = None
) -> float:
    """The q-quantile (0 <= q <= 1) of samples, optionally weighted (NaN when there are none)."""
    arr = np.asarray(samples, dtype=float)
    if arr.size == 0:
        return math.nan
    if weights is None:
        return float(np.quantile(arr, q))
    w = np.asarray(weights, dtype=float)
    keep = w > 0
    arr, w = arr[keep], w[keep]
    if arr.size == 0:
        return math.nan
    order = np.argsort(arr, kind="stable")
    arr, w = arr[order], w[order]
    cum = np.cumsum(w)
    target = q * cum[-1]
    idx = int(np.searchsorted(cum, target, side="left"))
    return float(arr[min(idx, arr.size - 1)])


def histogram_quantile(
    upper_bounds_s: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray, q: float
) -> float:
    """Quantile from per-bucket counts; bucket i covers (upper[i-1], upper[i]] (the first starts at 0).

    A last bucket with an infinite bound returns the largest finite bound, as Prometheus does.
    """
    total = float(sum(counts))
    if total <= 0:
        return math.nan
    rank = q * total
    cum = 0.0
    lower = 0.0
    for upper, c in zip(upper_bounds_s, counts, strict=True):
        if c > 0 and cum + c >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - cum) / c
        cum += c
        if not math.isinf(upper):
            lower = upper
    return lower


class LatencyDist(BaseModel):
    """A window's latencies: raw samples, or a histogram delta (per-bucket counts), or both empty."""

    model_config = ConfigDict(frozen=True)

    samples_s: list[float] = Field(default_factory=list)
    bucket_upper_s: list[float] = Field(default_factory=list)
    bucket_counts: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> LatencyDist:
        if len(self.bucket_upper_s) != len(self.bucket_counts):
            raise ValueError("bucket_upper_s and bucket_counts differ in length")
        if any(c < 0 for c in self.bucket_counts):
            raise ValueError("negative bucket count")
        if any(b >= a for a, b in zip(self.bucket_upper_s[1:], self.bucket_upper_s, strict=False)):
            raise ValueError("bucket bounds must increase")
        return self

    @property
    def count(self) -> float:
        return len(self.samples_s) if self.samples_s else float(sum(self.bucket_counts))

    def quantile(self, q: float) -> float:
        if self.samples_s:
            return quantile(self.samples_s, q)
        return histogram_quantile(self.bucket_upper_s, self.bucket_counts, q)

    def fraction_at_most(self, threshold_s: float) -> float:
        """Share of latencies <= threshold (histograms interpolate inside the bucket). NaN when empty."""
        if self.samples_s:
            arr = np.asarray(self.samples_s)
            return float(np.count_nonzero(arr <= threshold_s) / arr.size)
        total = float(sum(self.bucket_counts))
        if total <= 0:
            return math.nan
        below = 0.0
        lower = 0.0
        for upper, c in zip(self.bucket_upper_s, self.bucket_counts, strict=True):
            if threshold_s >= upper:
                below += c
            elif threshold_s > lower and not math.isinf(upper):
                below += c * (threshold_s - lower) / (upper - lower)
                break
            else:
                break
            lower = upper
        return below / total
