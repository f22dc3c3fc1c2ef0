"""SGLang's Prometheus metrics, exported by the stand-in replica under SGLang 0.5.23's names, types and buckets.

The names are the ones the sidecar's SGLang adapter reads (``engine_adapter/sglang/metrics.py``, one list for
both); types, label names and bucket bounds follow SGLang 0.5.23's ``srt/observability/metrics_collector.py``
(``TokenizerMetricsCollector``: the request histograms and counters, observed as tokens reach the client;
``SchedulerMetricsCollector``: the gauges, read from the engine at each scrape). Latencies are in the replica's
own (simulated) seconds: at ``--time-scale 10`` a TTFT of 1 s is 0.1 s of wall time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import pairwise

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schedctl.engine_adapter.sglang import metrics as names
from schedctl.sim.paced import Stream

# metrics_collector.py, TokenizerMetricsCollector.__init__: the default bucket bounds of 0.5.23
TTFT_BUCKETS_S = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
ITL_BUCKETS_S = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100,
                 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000)
E2E_BUCKETS_S = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200, 1800, 2400)


class EngineGauges:
    """What the scheduler-side gauges read, at scrape time."""

    def __init__(self, queue: Callable[[], float], running: Callable[[], float], token_usage: Callable[[], float],
                 cache_hit_rate: Callable[[], float], retractions: Callable[[], float] = lambda: 0.0) -> None:
        self.queue, self.running, self.token_usage, self.cache_hit_rate = queue, running, token_usage, cache_hit_rate
        self.retractions = retractions  # the scheduler's counter (requests retracted since start)


class _GaugeCollector(Collector):
    """SGLang's scheduler gauges and its retraction counter, labelled as one scheduler (tp_rank 0, pp_rank 0)
    reports them."""

    def __init__(self, model_name: str, gauges: EngineGauges) -> None:
        self._labels = {"model_name": model_name, "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        g = self._gauges
        for name, doc, read in (
            (names.RUNNING, "The number of running requests.", g.running),
            (names.QUEUE, "The number of requests in the waiting queue.", g.queue),
            (names.TOKEN_USAGE, "The token usage.", g.token_usage),
            (names.CACHE_HIT_RATE, "The prefix cache hit rate.", g.cache_hit_rate),
        ):
            family = GaugeMetricFamily(name, doc, labels=list(self._labels))
            family.add_metric(list(self._labels.values()), float(read()))
            yield family
        retracted = CounterMetricFamily(names.RETRACTED.removesuffix("_total"), "Total number of retracted requests.",
                                        labels=list(self._labels))
        retracted.add_metric(list(self._labels.values()), float(g.retractions()))
        yield retracted


class ReplicaMetrics:
    """One registry per replica: several replicas in one process (the tests) do not share counters."""

    def __init__(self, model_name: str, gauges: EngineGauges) -> None:
        self.registry = CollectorRegistry()
        reg, base = self.registry, ["model_name"]
        self._model = model_name
        self.ttft = Histogram(names.TTFT, "Histogram of time to first token in seconds.", [*base, "is_streaming"],
                              buckets=TTFT_BUCKETS_S, registry=reg)
        self.itl = Histogram(names.ITL, "Histogram of inter-token latency in seconds.", base, buckets=ITL_BUCKETS_S,
                             registry=reg)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
                             [*base, "is_streaming"], buckets=E2E_BUCKETS_S, registry=reg)
        self.requests = Counter(names.REQUESTS, "Number of requests processed.", [*base, "is_streaming"], registry=reg)
        self.aborted = Counter(names.ABORTED, "Number of requests aborted.", base, registry=reg)
        self.prompt_tokens = Counter(names.PROMPT_TOKENS, "Number of prefill tokens processed.",
                                     [*base, "is_streaming"], registry=reg)
        self.generation_tokens = Counter("sglang:generation_tokens_total", "Number of generation tokens processed.",
                                         [*base, "is_streaming"], registry=reg)
        self.cached_tokens = Counter(names.CACHED_TOKENS, "Number of cached prompt tokens by source "
                                     "(device/host/storage).", [*base, "cache_source"], registry=reg)
        reg.register(_GaugeCollector(model_name, gauges))

    def observe(self, stream: Stream, new_from: int, streaming: bool) -> None:
        """Tokens ``new_from..`` of ``stream`` reached the client (SGLang's tokenizer side observes them then)."""
        m, s = self._model, "true" if streaming else "false"
        times = stream.token_times_s
        if new_from == 0 and times:
            self.ttft.labels(m, s).observe(times[0] - stream.arrival_s)
        for a, b in pairwise(times[max(new_from - 1, 0):]):
            self.itl.labels(m).observe(b - a)
        if stream.aborted:
            self.aborted.labels(m).inc()
        elif stream.finished:
            self.requests.labels(m, s).inc()
            self.prompt_tokens.labels(m, s).inc(stream.prompt_tokens)
            self.generation_tokens.labels(m, s).inc(stream.output_len)
            self.cached_tokens.labels(m, "device").inc(stream.cached_tokens)
            self.e2e.labels(m, s).observe(times[-1] - stream.arrival_s)
