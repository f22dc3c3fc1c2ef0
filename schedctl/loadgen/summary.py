"""The summary of a live run: ServingSummary's fields (the names `schedctl simulate --json` prints) plus what only
a live run has — errors, timeouts, the client's own lag, the warm-up it left out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from schedctl.loadgen.client import RequestResult
from schedctl.sim.records import ServingSummary, serving_figures

StopReason = Literal["completed", "duration", "interrupted", "input_error"]


class LoadSummary(ServingSummary):
    """Figures of one `schedctl load` run; ``--json`` prints this object.

    Requests sent in the first ``warmup_s`` seconds (by their scheduled arrival) are left out of every figure
    here, errors included (``warmup_excluded`` counts them; ``--requests-out`` has them all). ``requests`` are
    the finished ones; ``errors`` (HTTP errors, refused connections, broken or aborted streams), ``timeouts``
    and ``cancelled`` (in flight at Ctrl-C) the others. ``cache_hit_rate`` is SGLang's ``cached_tokens`` over
    its ``prompt_tokens`` for finished requests (NaN when the server reports no cache figure).
    """

    api: str
    url: str
    rate: float | None = None
    seed: int | None = None
    sent: int
    errors: int
    timeouts: int
    cancelled: int
    warmup_s: float
    warmup_excluded: int
    duration_s: float  # wall time of the whole run, warm-up included
    send_lag_max_s: float  # worst delay of a send behind its scheduled time (--max-inflight, a busy client)
    stop_reason: StopReason


def summarize(
    results: Sequence[RequestResult], *, api: str, url: str, warmup_s: float, duration_s: float,
    stop_reason: StopReason, rate: float | None = None, seed: int | None = None,
) -> LoadSummary:
    kept = [r for r in results if r.scheduled_s >= warmup_s]
    done = [r for r in kept if r.status == "ok"]
    ttft = np.array([r.ttft_s for r in done if r.ttft_s is not None], dtype=float)
    gaps = [g for r in done for g in r.tbt_s()]
    n = len(done)
    span_s = max(r.finish_s or 0.0 for r in done) - min(r.send_s for r in done) if done else 0.0
    with_cache = [r for r in done if r.cached_tokens is not None and r.prompt_tokens]
    prompt_total = sum(r.prompt_tokens or 0 for r in with_cache)

    def count(status: str) -> int:
        return sum(1 for r in kept if r.status == status)

    figures = serving_figures(  # the same computation as the simulator's summary
        requests=n, ttft_s=ttft, tbt=gaps, span_s=span_s, output_tokens=sum(r.output_tokens for r in done),
        cached_tokens=sum(r.cached_tokens or 0 for r in with_cache) if prompt_total else None,
        prompt_tokens=prompt_total)
    return LoadSummary(
        **figures, api=api, url=url, rate=rate, seed=seed, sent=len(kept), errors=count("error"),
        timeouts=count("timeout"),
        cancelled=count("cancelled") + count("pending"), warmup_s=warmup_s, warmup_excluded=len(results) - len(kept),
        duration_s=duration_s, send_lag_max_s=max((r.send_s - r.scheduled_s for r in results), default=0.0),
        stop_reason=stop_reason,
    )
