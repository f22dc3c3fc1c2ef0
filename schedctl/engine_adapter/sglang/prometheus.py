"""Prometheus as the source of the SGLang adapter's windows (``[engine.metrics] source = "prometheus"``).

Instead of scraping the engine's ``/metrics``, the adapter asks the Prometheus server that scrapes it, with one
PromQL instant query per window (``POST /api/v1/query``) evaluated at the window's end, over this replica's
series (``selector``: label matchers such as ``job="sglang", pod="sglang-0"``):

* ``increase(X_bucket{sel}[W])`` of the TTFT and inter-token-latency histograms and ``increase(C{sel}[W])`` of the
  request and token counters, W the window's length: what happened in the window, counter resets handled by
  Prometheus;
* the queue, running, KV-usage and cache-hit gauges at the window's end;
* ``resets(num_requests_total{sel}[W])`` (an engine restart in the window), ``up{sel}`` and the age of its last
  sample (whether Prometheus is scraping the engine at all, and lately).

Each part is tagged with a ``schedctl_metric`` label (``label_replace``) and joined with ``or``, so the answer is
one vector read at one evaluation time. The answer becomes a ``metrics.Scrape`` whose counters and buckets are the
window's increases (a difference from zero), so the adapter computes the window exactly as from two scrapes of
the engine: the same rank aggregation, the same plausibility checks, the same Observation.

Anything that keeps a window from being read — Prometheus refused, timed out or answered garbage, no target
matches the selector, the last scrape failed (``up`` 0) or is older than ``max_scrape_age_s`` — raises
``MetricsUnavailable``: the adapter turns it into a stale window, and the guard holds, then falls back, as for an
engine outage. Prometheus's ``increase`` extrapolates to the range's ends, so counts read high by up to two scrape
intervals over the window's length (quantiles barely move; gauges not at all), and a window shorter than two
scrape intervals has no increase at all (stale): keep the scrape interval at most a fifth of the tick interval.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx

from schedctl.engine_adapter.base import EngineUnavailable
from schedctl.engine_adapter.sglang import metrics

TAG = "schedctl_metric"
UP, UP_AGE, RESETS = "up", "up_age_s", "resets"

# label matchers, comma-separated: name, operator, double-quoted value (PromQL's own string escapes allowed)
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
_SELECTOR = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*,?\s*$")


class MetricsUnavailable(EngineUnavailable):
    """Prometheus could not give this window (the engine itself may still answer)."""


def selector_problem(selector: str) -> str | None:
    """Why ``selector`` is not a list of PromQL label matchers for one replica (None: it is)."""
    if not selector.strip():
        return "empty: it would read every replica's series; give this replica's labels, e.g. pod=\"sglang-0\""
    if not _SELECTOR.match(selector):
        return (f"{selector!r} is not PromQL label matchers (name=\"value\", name=~\"regex\", ... separated by "
                "commas, without braces)")
    return None


def series(name: str, selector: str) -> str:
    """A selector of SGLang's series ``name`` as Prometheus stores it: ``sglang:x`` or ``sglang_x``.

    SGLang 0.5.23 names its metrics ``sglang:...``, but prometheus-client (0.26) writes the samples of its
    OpenMetrics exposition, which Prometheus 2.x asks for first, with the colon as an underscore; the plain text
    format (what the adapter's own scrape gets) keeps the colon. Both spellings are matched.
    """
    pattern = name.replace("sglang:", "sglang[:_]", 1)
    return "{" + ", ".join([f'__name__=~"{pattern}"'] + ([selector] if selector else [])) + "}"


def window_query(selector: str, window_s: float) -> str:
    """The one PromQL query that reads a window of ``window_s`` seconds ending at the evaluation time."""
    rng = f"[{max(1, round(window_s * 1000))}ms]"
    parts = [(f"increase({series(h + '_bucket', selector)}{rng})", h + "_bucket") for h in metrics.HISTOGRAMS]
    parts += [(f"increase({series(c, selector)}{rng})", c) for c in metrics.COUNTERS + metrics.SCHEDULER_COUNTERS]
    parts += [(series(g, selector), g) for g in metrics.GAUGES]
    up = "up{" + selector + "}"
    parts += [(f"resets({series(metrics.REQUESTS, selector)}{rng})", RESETS), (up, UP),
              (f"time() - timestamp({up})", UP_AGE)]
    return " or ".join(f'label_replace({expr}, "{TAG}", "{key}", "", "")' for expr, key in parts)


def _value(item: dict[str, Any]) -> float:
    try:
        return float(item["value"][1])  # Prometheus writes numbers as strings: "12", "NaN", "+Inf"
    except (KeyError, IndexError, TypeError, ValueError):
        return math.nan


def scrape_from_vector(result: list[Any]) -> tuple[metrics.Scrape, dict[str, list[float]]]:
    """The window's Scrape (increases and gauges) and the status parts (up, its age, resets) of a query answer."""
    scrape = metrics.Scrape()
    status: dict[str, list[float]] = defaultdict(list)
    buckets: dict[tuple[str, metrics.Labels], dict[float, float]] = defaultdict(dict)
    for item in result:
        labels = dict(item.get("metric", {})) if isinstance(item, dict) else {}
        key = labels.pop(TAG, None)
        labels.pop("__name__", None)
        value = _value(item)
        if key in (UP, UP_AGE, RESETS):
            status[key].append(value)
        elif key is not None and key.endswith("_bucket"):
            try:
                le = float(labels.pop("le"))
            except (KeyError, ValueError):
                continue
            buckets[(key, metrics.label_key(labels))][le] = value
        elif key in metrics.METRICS_READ:
            scrape.families.add(key)
            metrics.add_sample(scrape, key, labels, value)
    for (name, series), by_le in buckets.items():
        scrape.families.add(name.removesuffix("_bucket"))
        # Prometheus extrapolates each bucket's increase on its own, so a higher bucket can come out a hair
        # below a lower one; the running max keeps them cumulative (NaN passes through to the plausibility check)
        top = -math.inf
        for le in sorted(by_le):
            v = by_le[le]
            top = v if math.isnan(v) else max(top, v)
            metrics.add_sample(scrape, name, {**dict(series), "le": repr(le) if math.isfinite(le) else "+Inf"}, top)
    return scrape, status


class PrometheusSource:
    """Reads one replica's windows from a Prometheus server's HTTP API (``url`` such as ``http://prometheus:9090``)."""

    def __init__(
        self, url: str, selector: str, *, timeout_s: float = 2.0, retries: int = 2, backoff_s: float = 0.25,
        max_scrape_age_s: float = 60.0, sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        problem = selector_problem(selector)
        if problem is not None:
            raise ValueError(f"selector: {problem}")
        self.url = url.rstrip("/")
        self.selector = selector
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_scrape_age_s = max_scrape_age_s
        self._sleep = sleep
        self._client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout_s), transport=transport)

    def close(self) -> None:
        self._client.close()

    def _query(self, query: str, at_s: float) -> list[Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._client.post("/api/v1/query", data={"query": query, "time": f"{at_s:.3f}"})
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            try:
                body = resp.json()
            except ValueError:
                raise MetricsUnavailable(f"Prometheus at {self.url} did not answer JSON (HTTP {resp.status_code})") \
                    from None
            if not isinstance(body, dict) or body.get("status") != "success":
                error = body.get("error", "") if isinstance(body, dict) else ""
                raise MetricsUnavailable(f"Prometheus at {self.url} refused the query: {str(error)[:200]}")
            data = body.get("data")
            if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(
                    data.get("result"), list):
                raise MetricsUnavailable(f"Prometheus at {self.url} did not answer a vector")
            return list(data["result"])
        raise MetricsUnavailable(f"Prometheus at {self.url} failed after {self.retries + 1} tries ({last})")

    def read(self, window_s: float, at_s: float) -> tuple[metrics.Scrape, bool]:
        """The window of ``window_s`` seconds ending at ``at_s`` (epoch seconds): a Scrape of its increases and
        end gauges, and whether the engine's counters reset in it. Raises MetricsUnavailable."""
        scrape, status = scrape_from_vector(self._query(window_query(self.selector, window_s), at_s))
        where = "{" + self.selector + "}"
        if not status[UP]:
            raise MetricsUnavailable(f"Prometheus at {self.url} has no target matching {where}")
        if max(status[UP]) < 1:
            raise MetricsUnavailable(f"Prometheus's last scrape of {where} failed (up=0)")
        age_s = min(status[UP_AGE], default=math.inf)
        if not age_s <= self.max_scrape_age_s:
            raise MetricsUnavailable(f"Prometheus's last scrape of {where} is {age_s:.0f} s old "
                                     f"(more than {self.max_scrape_age_s:g} s)")
        if metrics.REQUESTS not in scrape.families:  # no increase at all: not an idle window, an unreadable one
            raise MetricsUnavailable(f"Prometheus has no SGLang series for {where} over {window_s:.3g} s (is the "
                                     "server started with --enable-metrics, and the window two scrape intervals?)")
        return scrape, any(v > 0 for v in status[RESETS])
