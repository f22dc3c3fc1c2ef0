"""SGLang's Prometheus metrics: parse one scrape, difference two scrapes, aggregate gauges across ranks.

Names are SGLang 0.5.23's (``srt/observability/metrics_collector.py``; a test checks them against the installed
source). Parsing uses prometheus-client's text parser, one metric family at a time, so a malformed family is
skipped with a warning instead of losing the scrape.

Deltas between scrapes: a counter or histogram series whose value went down was reset (the engine restarted);
its delta is then its current value (what it counted since the restart), never negative, and the reset is
reported. Histograms become per-bucket counts of the window, the input of ``LatencyDist``'s quantiles.

Retractions (``sglang:num_retracted_requests_total``, a scheduler-side counter) are differenced per series and
then aggregated as the gauges are (below): every TP rank of a group counts the same retractions. A labelled
counter has no sample before its first increment, so a declared family without samples is a window with 0
retractions; a scrape without the family (metrics off, another release) says nothing (None).

Gauges, aggregated deliberately: the scheduler of each (DP rank) group reports the same queue from every TP/PP
rank when ``--enable-metrics-for-all-schedulers`` is on, so series are grouped by their labels without
``tp_rank``, ``pp_rank`` and ``moe_ep_rank`` and the group takes its max (one value per scheduler group); queue
and running counts then add up over DP groups, the KV token usage takes the max over them (the fullest rank
limits admission) and the cache hit rate their mean. Per-priority breakdowns (``priority`` label set to a
value) are left out: the total sits under ``priority=""``.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

from prometheus_client.parser import text_string_to_metric_families

from schedctl.stats import LatencyDist

logger = logging.getLogger("schedctl.sglang.metrics")

TTFT = "sglang:time_to_first_token_seconds"
ITL = "sglang:inter_token_latency_seconds"
REQUESTS = "sglang:num_requests_total"
ABORTED = "sglang:num_aborted_requests_total"
PROMPT_TOKENS = "sglang:prompt_tokens_total"
CACHED_TOKENS = "sglang:cached_tokens_total"
QUEUE = "sglang:num_queue_reqs"
RUNNING = "sglang:num_running_reqs"
CACHE_HIT_RATE = "sglang:cache_hit_rate"
TOKEN_USAGE = "sglang:token_usage"
RETRACTED = "sglang:num_retracted_requests_total"  # scheduler-side: one series per rank (scheduler.py retract_decode)
RETRACTED_FAMILY = RETRACTED.removesuffix("_total")  # prometheus-client's name for the counter's family

HISTOGRAMS = (TTFT, ITL)
COUNTERS = (REQUESTS, ABORTED, PROMPT_TOKENS, CACHED_TOKENS)
SCHEDULER_COUNTERS = (RETRACTED,)  # reported by every TP/PP rank of a group: aggregated as the gauges are
GAUGES = (QUEUE, RUNNING, CACHE_HIT_RATE, TOKEN_USAGE)
METRICS_READ = HISTOGRAMS + COUNTERS + SCHEDULER_COUNTERS + GAUGES  # every SGLang metric name the adapter reads

RANK_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})

Labels = tuple[tuple[str, str], ...]


def label_key(d: dict[str, str], drop: frozenset[str] = frozenset()) -> Labels:
    return tuple(sorted((k, v) for k, v in d.items() if k not in drop))


@dataclass
class Scrape:
    """The parts of one /metrics answer the adapter uses."""

    counters: dict[str, dict[Labels, float]] = field(default_factory=dict)
    histograms: dict[str, dict[Labels, dict[float, float]]] = field(default_factory=dict)  # series -> le -> count
    gauges: dict[str, dict[Labels, float]] = field(default_factory=dict)
    families: set[str] = field(default_factory=set)  # every sglang:* family declared, with samples or not yet
    problems: list[str] = field(default_factory=list)  # implausible values of metrics the adapter reads

    @property
    def implausible(self) -> str | None:
        """Why this scrape is not data (None: it is): the adapter makes its window stale and keeps the previous
        scrape as the baseline, so a broken value never enters a delta or looks like a counter reset."""
        if not self.problems:
            return None
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return "implausible metrics: " + ", ".join(self.problems[:3]) + more

    @property
    def empty(self) -> bool:
        """No SGLang family at all: not SGLang's /metrics (a fresh server declares families before samples)."""
        return not self.families


_FAMILY_START = re.compile(r"^# (?:HELP|TYPE) (\S+)")


def _family_chunks(text: str) -> list[str]:
    """Split exposition text into per-family chunks (a chunk starts where the HELP/TYPE name changes)."""
    chunks: list[list[str]] = [[]]
    current: str | None = None
    for line in text.splitlines():
        m = _FAMILY_START.match(line)
        if m and m.group(1) != current:
            current = m.group(1)
            chunks.append([])
        chunks[-1].append(line)
    return ["\n".join(c) + "\n" for c in chunks if any(s.strip() for s in c)]


def parse_scrape(text: str) -> Scrape:
    """Parse SGLang's /metrics text; malformed families and values are skipped with a warning."""
    scrape = Scrape()
    for chunk in _family_chunks(text):
        try:
            families = list(text_string_to_metric_families(chunk))
        except Exception as exc:  # the parser raises ValueError and friends on bad text
            logger.warning("skipping unparsable metrics text (%s): %.80r", exc, chunk)
            continue
        for family in families:
            if family.name.startswith("sglang:"):
                scrape.families.add(family.name)
            for sample in family.samples:
                add_sample(scrape, sample.name, dict(sample.labels), sample.value)
    return scrape


# a count above 2**53 cannot go up by one in a float: no engine's counter, a broken exporter's
MAX_COUNT = float(2**53)
COUNTS = frozenset(COUNTERS + SCHEDULER_COUNTERS) | {h + "_bucket" for h in HISTOGRAMS} | {QUEUE, RUNNING}


def _read(name: str) -> bool:
    return name in METRICS_READ or (name.endswith("_bucket") and name[: -len("_bucket")] in HISTOGRAMS)


def add_sample(scrape: Scrape, name: str, labels: dict[str, str], value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        if _read(name):
            scrape.problems.append(f"{name}={value!r}")  # the adapter says so once, for the whole scrape
        else:  # a metric schedctl does not read (SGLang's CPU build exports sglang:fwd_occupancy as NaN every scrape)
            logger.debug("skipping metric %s with value %r", name, value)
        return
    if name in COUNTS and (value < 0 or value > MAX_COUNT):
        scrape.problems.append(f"{name}={value:.3g}")
        return
    if name in COUNTERS or name in SCHEDULER_COUNTERS:
        scrape.counters.setdefault(name, {})[label_key(labels)] = float(value)
    elif name in GAUGES:
        scrape.gauges.setdefault(name, {})[label_key(labels)] = float(value)
    elif name.endswith("_bucket") and name[: -len("_bucket")] in HISTOGRAMS:
        try:
            le = float(labels.pop("le"))
        except (KeyError, ValueError):
            logger.warning("skipping bucket of %s without a valid le label", name)
            return
        series = scrape.histograms.setdefault(name[: -len("_bucket")], {}).setdefault(label_key(labels), {})
        series[le] = float(value)


@dataclass
class Delta:
    """What happened between two scrapes."""

    counters: dict[str, float] = field(default_factory=dict)  # summed over series
    histograms: dict[str, LatencyDist] = field(default_factory=dict)
    reset: bool = False  # some counter or histogram went down: the engine restarted


def _counter_delta(cur: float, prev: float | None) -> tuple[float, bool]:
    if prev is None:
        return cur, False  # a series that appeared since the previous scrape counted from zero
    if cur < prev:
        return cur, True
    return cur - prev, False


def diff(prev: Scrape, cur: Scrape) -> Delta:
    out = Delta()
    for name in COUNTERS:
        total = 0.0
        for labels, value in cur.counters.get(name, {}).items():
            d, was_reset = _counter_delta(value, prev.counters.get(name, {}).get(labels))
            total += d
            out.reset |= was_reset
        out.counters[name] = total
    for name in SCHEDULER_COUNTERS:  # the delta of each series, then one per scheduler group (the max), summed
        deltas: dict[Labels, float] = {}
        for labels, value in cur.counters.get(name, {}).items():
            deltas[labels], was_reset = _counter_delta(value, prev.counters.get(name, {}).get(labels))
            out.reset |= was_reset
        out.counters[name] = sum(_scheduler_groups(deltas))
    for name in HISTOGRAMS:
        dist, was_reset = _histogram_delta(name, prev.histograms.get(name, {}), cur.histograms.get(name, {}))
        out.histograms[name] = dist
        out.reset |= was_reset
    return out


def _histogram_delta(
    name: str, prev: dict[Labels, dict[float, float]], cur: dict[Labels, dict[float, float]]
) -> tuple[LatencyDist, bool]:
    """Sum of the per-bucket window counts of every series (series with other bucket bounds are skipped)."""
    bounds: list[float] | None = None
    counts: list[float] = []
    any_reset = False
    for labels, buckets in cur.items():
        les = sorted(buckets)
        if not les or not math.isinf(les[-1]):
            logger.warning("skipping histogram series %s%s without a +Inf bucket", name, dict(labels))
            continue
        cum = [buckets[le] for le in les]
        old = prev.get(labels)
        if old is not None and sorted(old) == les and old[les[-1]] <= cum[-1]:
            cum = [c - old[le] for c, le in zip(cum, les, strict=True)]
        elif old is not None:
            any_reset = any_reset or old.get(les[-1], 0.0) > cum[-1]
        per_bucket = [cum[0]] + [b - a for a, b in pairwise(cum)]
        if any(c < 0 for c in per_bucket):
            logger.warning("skipping histogram series %s%s: its buckets are not cumulative", name, dict(labels))
            continue
        if bounds is None:
            bounds, counts = les, per_bucket
        elif les == bounds:
            counts = [a + b for a, b in zip(counts, per_bucket, strict=True)]
        else:
            logger.warning("skipping %s%s: its buckets differ from the other series", name, dict(labels))
    if bounds is None:
        return LatencyDist(), any_reset
    return LatencyDist(bucket_upper_s=bounds, bucket_counts=counts), any_reset


def _scheduler_groups(series: dict[Labels, float]) -> list[float]:
    """One value per scheduler group: the max over the TP/PP ranks that report the same group."""
    groups: dict[Labels, float] = defaultdict(lambda: -math.inf)
    for labels, value in series.items():
        d = dict(labels)
        if d.get("priority", ""):
            continue  # per-priority breakdown; the total is under priority=""
        key = label_key(d, RANK_LABELS)
        groups[key] = max(groups[key], value)
    return list(groups.values())


def gauge_sum(scrape: Scrape, name: str) -> float | None:
    values = _scheduler_groups(scrape.gauges.get(name, {}))
    return sum(values) if values else None


def gauge_max(scrape: Scrape, name: str) -> float | None:
    values = _scheduler_groups(scrape.gauges.get(name, {}))
    return max(values) if values else None


def gauge_mean(scrape: Scrape, name: str) -> float | None:
    values = _scheduler_groups(scrape.gauges.get(name, {}))
    return sum(values) / len(values) if values else None
