"""What a serving run records: per-request rows (columnar), the time-between-tokens distribution, and the
record and summary formats that the simulator (`schedctl simulate`) and the live load generator (`schedctl load`)
share, so a simulated and a live run of one trace compare column by column.

Per-request rows go into typed arrays (8 bytes a field), not objects, so a million-request run stays small and
summaries are one numpy call. Time between tokens (TBT) is too many samples to keep one by one — every decode
step of every running request is one — so it goes into a fine log-spaced histogram (1% wide buckets: quantiles
within 1%) with the exact count and sum kept beside it. Decode runs are added in bulk: their step times are a
non-decreasing sequence, so a run whose first and last step fall in one bucket costs one addition.
"""

from __future__ import annotations

import itertools
import math
import os
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel

from schedctl.files import AtomicWriter
from schedctl.sim.step_time import DecodeRun
from schedctl.stats import LatencyDist, histogram_quantile, quantile

_LO_S = 1e-5
_RATIO = 1.01
_NBINS = math.ceil(math.log(1e4 / _LO_S) / math.log(_RATIO))
_LOG_RATIO = math.log(_RATIO)
# bucket i covers (UPPER[i-1], UPPER[i]]; bucket 0 starts at 0; the last bucket is open-ended
UPPER_S = np.append(_LO_S * _RATIO ** np.arange(1, _NBINS), np.inf)


def _bucket(values: np.ndarray) -> np.ndarray:
    idx = np.ceil(np.log(np.maximum(values, 1e-300) / _LO_S) / _LOG_RATIO) - 1
    return np.clip(idx, 0, _NBINS - 1).astype(np.int64)


class TBTHistogram:
    def __init__(self) -> None:
        self.counts = np.zeros(_NBINS, dtype=float)
        self.total_weight = 0.0  # number of inter-token gaps
        self.total_s = 0.0  # their exact sum
        self._single_v: list[float] = []
        self._single_w: list[float] = []
        self._runs: list[tuple[DecodeRun, int, int, float]] = []
        self._drained = np.zeros(_NBINS, dtype=float)

    def add(self, value_s: float, weight: float = 1.0) -> None:
        self._single_v.append(value_s)
        self._single_w.append(weight)
        self.total_weight += weight
        self.total_s += value_s * weight
        if len(self._single_v) >= 65536:
            self.flush()

    def add_run(self, run: DecodeRun, j0: int, j1: int, weight: float) -> None:
        """Steps j0..j1-1 of a decode run, each one gap for ``weight`` requests."""
        if j1 <= j0:
            return
        self._runs.append((run, j0, j1, weight))
        self.total_weight += weight * (j1 - j0)
        self.total_s += weight * (run.total_s(j1) - run.total_s(j0))
        if len(self._runs) >= 16384:
            self.flush()

    def flush(self) -> None:
        if self._single_v:
            np.add.at(self.counts, _bucket(np.asarray(self._single_v)), np.asarray(self._single_w))
            self._single_v.clear()
            self._single_w.clear()
        if self._runs:
            firsts = np.array([r.step_s(j0) for r, j0, _j1, _w in self._runs])
            lasts = np.array([r.step_s(j1 - 1) for r, _j0, j1, _w in self._runs])
            lens = np.array([j1 - j0 for _r, j0, j1, _w in self._runs], dtype=float)
            weights = np.array([w for *_rest, w in self._runs])
            b_first, b_last = _bucket(firsts), _bucket(lasts)
            same = b_first == b_last
            np.add.at(self.counts, b_first[same], weights[same] * lens[same])
            for i in np.flatnonzero(~same):
                r, j0, j1, w = self._runs[i]
                np.add.at(self.counts, _bucket(r.step_times_s(j0, j1)), w)
            self._runs.clear()

    def quantile(self, q: float) -> float:
        self.flush()
        return histogram_quantile(UPPER_S, self.counts, q)

    @property
    def mean_s(self) -> float:
        return self.total_s / self.total_weight if self.total_weight else math.nan

    def drain(self) -> LatencyDist:
        """The gaps added since the previous drain, as a histogram delta (non-empty buckets only)."""
        self.flush()
        delta = self.counts - self._drained
        self._drained = self.counts.copy()
        nz = np.flatnonzero(delta > 0)
        if nz.size == 0:
            return LatencyDist()
        # keep the buckets' lower edges implicit: emit the empty bucket just below each run of non-empty ones
        keep = np.union1d(nz, np.clip(nz - 1, 0, None))
        return LatencyDist(bucket_upper_s=UPPER_S[keep].tolist(), bucket_counts=delta[keep].tolist())


_FIELDS_F = ("arrival_s", "first_token_s", "finish_s")
_FIELDS_I = ("request_id", "prompt_tokens", "cached_tokens", "output_tokens", "retractions")


@dataclass(slots=True)
class RequestRow:
    request_id: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    retractions: int
    slo_class: str
    token_times_s: list[float] | None = None  # every token's emission time, when the engine records them

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    def tbt_s(self) -> list[float]:
        """Gaps between consecutive tokens (needs token_times_s)."""
        t = self.token_times_s or []
        return [b - a for a, b in itertools.pairwise(t)]

    def record(self) -> RequestRecord:
        return RequestRecord(
            request_id=self.request_id, arrival_s=self.arrival_s, first_token_s=self.first_token_s,
            finish_s=self.finish_s, prompt_tokens=self.prompt_tokens, cached_tokens=self.cached_tokens,
            output_tokens=self.output_tokens, retractions=self.retractions, slo_class=self.slo_class,
            ttft_s=self.ttft_s,
        )


class RequestRecord(BaseModel):
    """One line of ``--requests-out`` (JSONL), from `schedctl simulate` and `schedctl load` alike.

    Times are seconds on the run's clock; ``arrival_s`` is when the request reached the engine (for a live run:
    when it was sent) and ``ttft_s = first_token_s - arrival_s``. The simulator fills the first ten fields. A live
    run leaves out what it cannot know (``retractions``; ``cached_tokens`` when the server does not report it;
    the times a failed request never reached) and adds ``status``, ``error`` and ``scheduled_s`` (the arrival
    offset the trace asked for; ``arrival_s - scheduled_s`` is the client's own lag). Fields that are None are
    not written.
    """

    request_id: int
    arrival_s: float
    first_token_s: float | None = None
    finish_s: float | None = None
    prompt_tokens: int
    cached_tokens: int | None = None
    output_tokens: int
    retractions: int | None = None
    slo_class: str = "default"
    ttft_s: float | None = None
    status: Literal["ok", "error", "timeout", "cancelled"] | None = None  # live runs only
    error: str | None = None
    scheduled_s: float | None = None


def write_request_records(path: str | os.PathLike[str], records: Iterable[RequestRecord]) -> int:
    """Write records as JSONL atomically (no file on failure); returns the number written."""
    n = 0
    with AtomicWriter(path) as fh:
        for rec in records:
            fh.write(rec.model_dump_json(exclude_none=True) + "\n")
            n += 1
    return n


class ServingSummary(BaseModel):
    """The figures every serving run reports, simulated (SimSummary) or live (LoadSummary): same names, same units.

    ``requests`` counts finished requests; TTFT quantiles are over them, TBT quantiles over every gap between two
    consecutive output tokens; throughput is finished requests over the span from the first arrival to the last
    finish; ``cache_hit_rate`` is prompt tokens served from the prefix cache over all prompt tokens.
    """

    requests: int
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    ttft_max_s: float
    tbt_p50_s: float
    tbt_p99_s: float
    throughput_rps: float
    output_tokens_per_s: float
    cache_hit_rate: float


def serving_figures(
    *, requests: int, ttft_s: Sequence[float] | np.ndarray, tbt: TBTHistogram | Sequence[float] | np.ndarray,
    span_s: float, output_tokens: int, cached_tokens: int | None, prompt_tokens: int,
) -> dict[str, float | int]:
    """ServingSummary's fields, computed one way for a simulated and a live run (callers choose the requests:
    finished ones, warm-up left out). ``tbt``: every gap between two consecutive tokens, or the simulator's
    histogram of them; ``span_s``: first arrival to last finish; ``cached_tokens`` None: no cache figure (NaN)."""
    ttft = np.asarray(ttft_s, dtype=float)
    tbt_q = tbt.quantile if isinstance(tbt, TBTHistogram) else (lambda q: quantile(tbt, q))
    return dict(
        requests=requests, ttft_mean_s=float(ttft.mean()) if ttft.size else math.nan,
        ttft_p50_s=quantile(ttft, 0.5), ttft_p90_s=quantile(ttft, 0.9), ttft_p99_s=quantile(ttft, 0.99),
        ttft_max_s=float(ttft.max()) if ttft.size else math.nan, tbt_p50_s=tbt_q(0.5), tbt_p99_s=tbt_q(0.99),
        throughput_rps=requests / span_s if span_s > 0 else 0.0,
        output_tokens_per_s=output_tokens / span_s if span_s > 0 else 0.0,
        cache_hit_rate=cached_tokens / prompt_tokens if cached_tokens is not None and prompt_tokens else math.nan,
    )


class RequestLog:
    """Finished requests, one row each, stored column by column."""

    def __init__(self, keep_token_times: bool = False) -> None:
        self.cols_f = {f: array("d") for f in _FIELDS_F}
        self.cols_i = {f: array("q") for f in _FIELDS_I}
        self.slo_class: list[str] = []
        self.token_times: list[list[float]] | None = [] if keep_token_times else None

    def __len__(self) -> int:
        return len(self.cols_i["request_id"])

    def append(self, row: RequestRow) -> None:
        for f in _FIELDS_F:
            self.cols_f[f].append(getattr(row, f))
        for f in _FIELDS_I:
            self.cols_i[f].append(getattr(row, f))
        self.slo_class.append(row.slo_class)
        if self.token_times is not None:
            self.token_times.append(row.token_times_s or [])

    def column(self, name: str, start: int = 0) -> np.ndarray:
        col = self.cols_f.get(name)
        arr = np.frombuffer(col if col is not None else self.cols_i[name], dtype=float if col is not None else np.int64)
        return arr[start:].copy()

    def ttft_s(self, start: int = 0) -> np.ndarray:
        return self.column("first_token_s", start) - self.column("arrival_s", start)

    def row(self, i: int) -> RequestRow:
        times = self.token_times[i] if self.token_times is not None else None
        ci, cf = self.cols_i, self.cols_f
        return RequestRow(
            request_id=ci["request_id"][i], arrival_s=cf["arrival_s"][i], first_token_s=cf["first_token_s"][i],
            finish_s=cf["finish_s"][i], prompt_tokens=ci["prompt_tokens"][i], cached_tokens=ci["cached_tokens"][i],
            output_tokens=ci["output_tokens"][i], retractions=ci["retractions"][i], slo_class=self.slo_class[i],
            token_times_s=times,
        )

    def rows(self, start: int = 0) -> list[RequestRow]:
        return [self.row(i) for i in range(start, len(self))]
