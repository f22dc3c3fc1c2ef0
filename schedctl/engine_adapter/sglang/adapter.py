"""The SGLang engine adapter: observe a running SGLang server over HTTP and push PolicySpecs to its plugin.

* ``observe()`` scrapes ``GET /metrics`` (SGLang started with ``--enable-metrics``) and differences it with the
  previous scrape (``metrics.py``): the window's TTFT and inter-token-latency histograms, finished and aborted
  requests, prompt and cached tokens, and the queue, running, KV-usage and cache-hit gauges aggregated across
  ranks. With a ``PrometheusSource`` (``[engine.metrics] source = "prometheus"``, ``prometheus.py``) the same
  window comes from PromQL over the Prometheus server that scrapes the engine; a Prometheus that cannot give it
  makes the window stale (the guard holds, then falls back, as in an engine outage). It also reads
  ``GET /server_info`` for the policy the plugin reports active; that read may fail
  without failing the observation.
* ``take_requests()`` returns the per-request records SGLang exported since the previous call
  (``export.py``): the latency stream (arrival time, TTFT, prompt and cached tokens) for the controller and the
  what-if replay.
* ``apply(spec)`` pushes through SGLang's own ``POST /set_internal_state`` (``channel.py``), with a version
  number that goes up by one at each push, then reads it back from ``/server_info``.

Every request has a timeout and is retried with exponential backoff on transport errors and 5xx answers. Errors
are typed: ``EngineUnavailable`` (refused, timed out, garbage), ``UnsupportedPolicy`` (a kind the plugin lacks,
the plugin not loaded, or SGLang's refusal). The engine generation goes up when a counter goes down (the engine
restarted) or ``/server_info``'s ``startup_time`` changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httpx

from schedctl.engine_adapter.base import Capabilities, EngineUnavailable, Observation, UnsupportedPolicy
from schedctl.engine_adapter.sglang import channel, metrics, reserve
from schedctl.engine_adapter.sglang.export import RequestExportFollower, RequestRecord
from schedctl.engine_adapter.sglang.prometheus import MetricsUnavailable, PrometheusSource
from schedctl.policies.spec import PolicySpec, policy_label

logger = logging.getLogger("schedctl.sglang.adapter")


def _positive(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def _clamp01(x: float | None) -> float | None:
    return None if x is None else min(1.0, max(0.0, x))


class SGLangAdapter:
    """EngineAdapter for one SGLang server (``base_url`` such as ``http://127.0.0.1:30000``)."""

    def __init__(
        self,
        base_url: str,
        *,
        request_metrics_dir: str | None = None,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.25,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        prometheus: PrometheusSource | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._clock = clock
        self._sleep = sleep
        self._client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s), transport=transport)
        self._prometheus = prometheus  # None: scrape the engine's /metrics; else read the windows from Prometheus
        self._follower = RequestExportFollower(request_metrics_dir) if request_metrics_dir else None
        self._prev: metrics.Scrape | None = None
        self._prev_t_s: float | None = None
        self._prev_load: float | None = None
        self._startup_time: float | None = None
        self._policy_version = 0
        self.engine_generation = 0

    def close(self) -> None:
        self._client.close()
        if self._prometheus is not None:
            self._prometheus.close()

    # -- HTTP ---------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self._client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:  # refused, reset, timed out, ...
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            return resp
        raise EngineUnavailable(f"{method} {self.base_url}{path} failed after {self.retries + 1} tries ({last})")

    def _get_json(self, path: str) -> Any:
        resp = self._request("GET", path)
        if resp.status_code != 200:
            raise EngineUnavailable(f"GET {path} answered HTTP {resp.status_code}")
        try:
            return resp.json()
        except ValueError:
            raise EngineUnavailable(f"GET {path} did not answer JSON") from None

    def _server_info(self) -> dict[str, Any]:
        info = self._get_json("/server_info")
        if not isinstance(info, dict):
            raise EngineUnavailable("GET /server_info did not answer a JSON object")
        startup = info.get("startup_time")
        if isinstance(startup, int | float):
            if self._startup_time is not None and startup != self._startup_time:
                self.engine_generation += 1
                logger.warning("SGLang restarted (startup_time %s -> %s)", self._startup_time, startup)
            self._startup_time = float(startup)
        return info

    @staticmethod
    def _plugin_states(info: dict[str, Any]) -> list[dict[str, Any]]:
        states = info.get("internal_states")
        if not isinstance(states, list):
            return []
        found = [s.get(channel.SERVER_INFO_KEY) for s in states if isinstance(s, dict)]
        return [f for f in found if isinstance(f, dict)]

    def _active_from(self, info: dict[str, Any]) -> tuple[PolicySpec | None, int]:
        """The policy the plugin reports on every DP rank, and the lowest version among them."""
        states = self._plugin_states(info)
        if not states:
            return None, 0
        try:
            seen = {(int(s[channel.KEY_KIND]), int(s[channel.KEY_K])) for s in states}
            version = min(int(s[channel.KEY_VERSION]) for s in states)
            if len(seen) != 1:
                logger.warning("SGLang ranks disagree on the schedctl policy: %s", seen)
                return None, version
            return channel.decode_policy(*seen.pop()), version
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("unreadable schedctl state in /server_info: %r", exc)
            return None, 0

    # -- EngineAdapter ------------------------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        return self.status()[0]

    def status(self) -> tuple[Capabilities, PolicySpec | None]:
        """What this server accepts and the policy the plugin runs, from one ``GET /server_info``."""
        info = self._server_info()
        plugin = bool(self._plugin_states(info))
        base = info.get("schedule_policy")
        if not plugin:
            kinds: frozenset[str] = frozenset()
        elif base == "lpm":
            kinds = channel.SUPPORTED_KINDS
        else:  # no radix-cache matching to order by: the orders that need no prefix match
            kinds = channel.SUPPORTED_KINDS - channel.PREFIX_MATCH_KINDS
        version = info.get("version")
        caps = Capabilities(engine="sglang", policy_kinds=kinds, version=version if isinstance(version, str) else None)
        return caps, self._active_from(info)[0]

    def observe(self) -> Observation:
        if self._prometheus is not None:
            return self._observe_prometheus(self._prometheus)
        resp = self._request("GET", "/metrics")
        if resp.status_code != 200:
            raise EngineUnavailable(f"GET /metrics answered HTTP {resp.status_code}")
        now_s = self._clock()
        scrape = metrics.parse_scrape(resp.text)
        if scrape.empty:
            raise EngineUnavailable("GET /metrics has no SGLang metrics (is the server started with --enable-metrics?)")
        active, stale_reason, reported, conservativeness = self._active_or_why()
        if scrape.implausible is not None:  # not data: a stale window; the previous scrape stays the baseline
            return self._stale(now_s, scrape.implausible, active, reported)
        prev, prev_t_s = self._prev, self._prev_t_s
        self._prev, self._prev_t_s = scrape, now_s
        delta = metrics.diff(prev, scrape) if prev is not None and prev_t_s is not None else None
        return self._window(delta, scrape, prev_t_s, now_s, active, stale_reason).model_copy(
            update={"active_reported": reported, "conservativeness": conservativeness})

    def _observe_prometheus(self, source: PrometheusSource) -> Observation:
        """The window from Prometheus (``prometheus.py``): a Prometheus that cannot give it makes the window stale
        while the engine answers (a push still lands), an EngineUnavailable when the engine does not either."""
        now_s = self._clock()
        active, stale_reason, reported, conservativeness = self._active_or_why()
        prev_t_s = self._prev_t_s
        # the first read is a baseline (an empty window, as the first scrape of the engine) with the gauges now
        window_s = now_s - prev_t_s if prev_t_s is not None else source.max_scrape_age_s
        try:
            scrape, reset = source.read(window_s, now_s)
        except MetricsUnavailable as exc:  # the window start stays: the next read covers the gap
            if stale_reason is not None:
                raise EngineUnavailable(f"{stale_reason}; and {exc}") from None
            return self._stale(now_s, f"metrics unavailable: {exc}", active, reported)
        if scrape.implausible is not None:
            return self._stale(now_s, scrape.implausible, active, reported)
        self._prev_t_s = now_s
        delta = None
        if prev_t_s is not None:
            delta = metrics.diff(metrics.Scrape(), scrape)  # the increases are the window's differences from zero
            delta.reset = reset
        return self._window(delta, scrape, prev_t_s, now_s, active, stale_reason).model_copy(
            update={"active_reported": reported, "conservativeness": conservativeness})

    def _active_or_why(self) -> tuple[PolicySpec | None, str | None, bool, float | None]:
        """The policy the plugin reports, why it is unknown (None: known), whether the plugin answered, and the
        schedule_conservativeness it reads back (None: not reported)."""
        try:
            info = self._server_info()
        except EngineUnavailable as exc:
            return None, f"active policy unknown: {exc}", False, None
        active, _version = self._active_from(info)
        conservativeness = self._reserve_from(info).get("schedule_conservativeness")
        # the plugin answered: None is "its own order"
        return active, None, bool(self._plugin_states(info)), conservativeness if _positive(conservativeness) else None

    def _stale(self, now_s: float, why: str, active: PolicySpec | None, reported: bool) -> Observation:
        logger.warning("SGLang %s", why)
        return Observation(start_s=self._prev_t_s if self._prev_t_s is not None else now_s, end_s=now_s,
                           arrivals=0, completions=0, stale=True, stale_reason=why, active_policy=active,
                           active_reported=reported, engine_generation=self.engine_generation)

    def _window(
        self,
        delta: metrics.Delta | None,
        cur: metrics.Scrape,
        prev_t_s: float | None,
        now_s: float,
        active: PolicySpec | None,
        stale_reason: str | None,
    ) -> Observation:
        """The Observation of the window (``prev_t_s``, ``now_s``]: ``delta`` what happened in it (None: the first
        read, a baseline), ``cur`` the gauges at its end."""
        queue = metrics.gauge_sum(cur, metrics.QUEUE)
        running = metrics.gauge_sum(cur, metrics.RUNNING)
        load = (queue or 0.0) + (running or 0.0)
        common: dict[str, Any] = {
            "end_s": now_s,
            "queue_len": max(0, round(queue or 0)),
            "running": max(0, round(running or 0)),
            "kv_utilization": _clamp01(metrics.gauge_max(cur, metrics.TOKEN_USAGE)),
            "active_policy": active,
            "stale_reason": stale_reason,
        }
        prev_load, self._prev_load = self._prev_load, load
        if delta is None or prev_t_s is None:  # first read: a baseline, an empty window
            return Observation(
                start_s=now_s,
                arrivals=0,
                completions=0,
                cache_hit_rate=_clamp01(metrics.gauge_mean(cur, metrics.CACHE_HIT_RATE)),
                engine_generation=self.engine_generation,
                **common,
            )
        if delta.reset:
            self.engine_generation += 1
            prev_load = 0.0  # the restarted engine started empty
            logger.warning("SGLang counters went down: engine restarted (generation %d)", self.engine_generation)
        completions = delta.counters[metrics.REQUESTS]
        aborted = delta.counters[metrics.ABORTED]
        retracted = round(delta.counters[metrics.RETRACTED]) if metrics.RETRACTED_FAMILY in cur.families else None
        prompt = delta.counters[metrics.PROMPT_TOKENS]
        cached = delta.counters[metrics.CACHED_TOKENS]
        # No arrival counter in SGLang: requests in = requests out + growth of (waiting + running).
        arrivals = max(0.0, completions + aborted + load - (prev_load or 0.0))
        hit_rate = cached / prompt if prompt > 0 else metrics.gauge_mean(cur, metrics.CACHE_HIT_RATE)
        return Observation(
            start_s=prev_t_s,
            arrivals=round(arrivals),
            completions=round(completions),
            ttft=delta.histograms[metrics.TTFT],
            tbt=delta.histograms[metrics.ITL],
            cache_hit_rate=_clamp01(hit_rate),
            prompt_tokens_mean=prompt / completions if completions > 0 else None,
            retractions=retracted,
            engine_generation=self.engine_generation,
            **common,
        )

    def take_requests(self) -> list[RequestRecord]:
        """Per-request records SGLang exported since the previous call (empty without an export directory)."""
        return self._follower.poll() if self._follower is not None else []

    def _set_internal_state(self, server_args: dict[str, Any], label: str, hint: str) -> None:
        """POST ``server_args`` to SGLang's /set_internal_state; UnsupportedPolicy unless every rank applied them."""
        resp = self._request("POST", "/set_internal_state", json={"server_args": server_args})
        if resp.status_code != 200:
            raise UnsupportedPolicy(f"SGLang refused {label}: HTTP {resp.status_code} {resp.text[:200]}")
        try:
            updated = resp.json()
        except ValueError:
            raise EngineUnavailable("POST /set_internal_state did not answer JSON") from None
        if not isinstance(updated, list) or not updated or not all(u is True for u in updated):
            raise UnsupportedPolicy(f"SGLang refused {label} (answer {updated!r}): {hint}")

    def apply(self, spec: PolicySpec | None) -> None:
        """Make ``spec`` the plugin's policy on every rank (None hands the order back to SGLang)."""
        try:
            _, seen_version = self._active_from(self._server_info())
        except EngineUnavailable:
            seen_version = 0
        version = max(self._policy_version, seen_version) + 1
        payload = channel.encode_policy(spec, version)  # UnsupportedPolicy for kinds the plugin lacks
        label = "off" if spec is None else policy_label(spec)
        self._set_internal_state(payload, label, "is the plugin loaded (SGLANG_PLUGINS=schedctl) and the server "
                                 "started with --schedule-policy lpm? The server log says which key it rejected.")
        self._policy_version = version
        active, active_version = self._active_from(self._server_info())
        if active_version != version or active != spec:
            raise EngineUnavailable(f"pushed {label} v{version}, but /server_info reports {active} v{active_version}")
        logger.info("pushed %s to SGLang (version %d)", label, version)

    def reserve(self) -> dict[str, float] | None:
        """The admission reserve the plugin reads back from the scheduler (``reserve.py``); None if none reports it."""
        return self._reserve_from(self._server_info()) or None

    @classmethod
    def _reserve_from(cls, info: dict[str, Any]) -> dict[str, float]:
        """The first rank's reserve readback in a ``/server_info`` answer (empty: none reports it)."""
        for state in cls._plugin_states(info):
            found = state.get("reserve")
            if isinstance(found, dict):
                return {k: float(v) for k, v in found.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        return {}

    def set_conservativeness(self, value: float) -> dict[str, float]:
        """Set SGLang's ``schedule_conservativeness`` on every rank at run time; returns the readback."""
        value = reserve.check_conservativeness(value)
        self._set_internal_state({reserve.KEY_CONSERVATIVENESS: value}, f"schedule_conservativeness {value:g}",
                                 "is the plugin loaded (SGLANG_PLUGINS=schedctl)?")
        now = self.reserve()
        if now is None or now.get("schedule_conservativeness") != value:
            raise EngineUnavailable(f"pushed schedule_conservativeness {value:g}, but /server_info reports {now}")
        logger.info("set SGLang schedule_conservativeness to %g (reserve share %.3f)", value,
                    now.get("new_token_ratio_init", float("nan")))
        return now
