"""Pool consecutive thin windows of one policy into one piece of evidence. Pure.

The objective refuses a window with fewer than ``min_samples`` first tokens (a P99 of five samples is noise). At
low request rates that is most windows: Mooncake's trace at 1.3 req/s of 15k-token prompts gives about 13 first
tokens per 10 s window, so 85% of its windows earned nothing — and the thinnest windows are the worst ones (a
policy that stalls the queue admits few requests), so what little was credited came from the good spells. The
pool merges such windows, while one policy runs, until together they hold ``min_samples`` first tokens; the merged
window (start of the first, end of the last; the queue, running set and oldest wait at its end) is then scored as
one. It holds at most ``pool_max_windows`` windows: beyond that the oldest is dropped, so the evidence stays
recent. A window that is evidence on its own, a stale window or a change of policy empties the pool.

Latencies merge when both windows carry raw samples, or histograms with the same buckets (SGLang's); otherwise
the pool starts again from the newer window.
"""

from __future__ import annotations

from collections import deque

from schedctl.engine_adapter.base import Observation
from schedctl.policies.spec import PolicySpec
from schedctl.stats import LatencyDist


def merge_dists(a: LatencyDist, b: LatencyDist) -> LatencyDist | None:
    """The latencies of both windows (None when they cannot be merged: samples vs histogram, other buckets)."""
    if not a.count:
        return b
    if not b.count:
        return a
    if a.samples_s and b.samples_s:
        return LatencyDist(samples_s=[*a.samples_s, *b.samples_s])
    if not a.samples_s and not b.samples_s and a.bucket_upper_s == b.bucket_upper_s:
        return LatencyDist(bucket_upper_s=list(a.bucket_upper_s),
                           bucket_counts=[x + y for x, y in zip(a.bucket_counts, b.bucket_counts, strict=True)])
    return None


def merge_windows(windows: list[Observation]) -> Observation | None:
    """One window spanning ``windows`` (consecutive, oldest first): counts and latencies summed, the state at
    the end (queue, running, KV, oldest wait, policy) and the last known cache hit rate from the newest."""
    first, last = windows[0], windows[-1]
    ttft, tbt = first.ttft, first.tbt
    for w in windows[1:]:
        merged_ttft, merged_tbt = merge_dists(ttft, w.ttft), merge_dists(tbt, w.tbt)
        if merged_ttft is None:
            return None
        ttft, tbt = merged_ttft, merged_tbt if merged_tbt is not None else w.tbt
    hit = next((w.cache_hit_rate for w in reversed(windows) if w.cache_hit_rate is not None), None)
    return last.model_copy(update={
        "start_s": first.start_s, "arrivals": sum(w.arrivals for w in windows),
        "completions": sum(w.completions for w in windows), "ttft": ttft, "tbt": tbt, "cache_hit_rate": hit,
    })


class WindowPool:
    """Thin windows of the running policy, until together they are evidence."""

    def __init__(self, min_samples: int, max_windows: int) -> None:
        self.min_samples = min_samples
        self.windows: deque[Observation] = deque(maxlen=max_windows)
        self.policy: PolicySpec | None = None
        self.merged_windows = 0  # how many windows the last merged window spans

    def clear(self) -> None:
        self.windows.clear()
        self.policy = None

    def add(self, obs: Observation, policy: PolicySpec | None) -> Observation | None:
        """Take a fresh window too thin on its own, run under ``policy``; returns the merged window once the pool
        holds ``min_samples`` first tokens (and empties), else None."""
        if self.windows.maxlen is not None and self.windows.maxlen < 2:
            return None
        if policy != self.policy or (self.windows and self.windows[-1].end_s > obs.start_s + 1e-9):
            self.clear()
        self.policy = policy
        self.windows.append(obs)
        merged = merge_windows(list(self.windows))
        if merged is None:
            self.windows.clear()
            self.windows.append(obs)
            return None
        if merged.ttft.count < self.min_samples:
            return None
        self.merged_windows = len(self.windows)
        self.windows.clear()
        return merged
