"""Windows read through a real Prometheus (Debian's 2.42) scraping a real SGLang server on this CPU and the sidecar
(marker `live`; scripts/test-sglang.sh runs it).

One SGLang server for the module (tests/live_support.py), one sidecar API over it, and one prometheus process
(tests/prometheus_support.py) on its own port and files, scraping both every second. The PromQL window must equal
the window scraped from the engine directly (within histogram-bucket resolution), and a Prometheus outage must
bring the same hold-then-fallback as an engine outage.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import dashboard_metric_names, stored_as
from live_support import live_server, wait_until
from prometheus_support import SCRAPE_INTERVAL_S, PrometheusProcess, free_port

from schedctl.controller.core import Controller
from schedctl.controller.decision import Decision
from schedctl.controller.service import Service, open_sidecar
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.launcher import ServerProcess
from schedctl.engine_adapter.sglang.prometheus import PrometheusSource
from schedctl.loadgen.runner import LoadConfig, run_load
from schedctl.policies.spec import policy_label
from schedctl.settings import load_settings
from schedctl.workloads.registry import make_requests

pytestmark = pytest.mark.live

SELECTOR = 'job="sglang", pod="sglang-0"'
BURST = "gsp:num_groups=6,prompts_per_group=8,system_prompt_len=512,question_len=32,output_len=4"
STALE_HOLD_TICKS = 2


class Fleet:
    """The server, a sidecar API over it (scraped, like the engine), and Prometheus."""

    def __init__(self, server: ServerProcess, prometheus: PrometheusProcess, sidecar: Service) -> None:
        self.server, self.prometheus, self.sidecar = server, prometheus, sidecar

    def via_prometheus(self) -> SGLangAdapter:
        source = PrometheusSource(self.prometheus.url, SELECTOR, timeout_s=5.0, retries=0, max_scrape_age_s=5.0)
        return SGLangAdapter(self.server.url, timeout_s=10.0, prometheus=source)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with live_server(tmp_path_factory.mktemp("live-prom"), ["--max-running-requests", "4"]) as server:
        # every series SGLang exports exists before the windows start (Prometheus counts a new series from its
        # first sample, the direct scrape from zero): a few requests first
        run_load(make_requests(BURST, 50.0, num_requests=8, seed=9), LoadConfig(url=server.url, vocab_size=32000))
        sidecar, api = open_sidecar(_params(), SGLangAdapter(server.url), run_id="prom", clock=time.time,
                                    api=("127.0.0.1", 0, "token"))
        prometheus = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), {
            "sglang": (server.url.removeprefix("http://"), {"pod": "sglang-0"}),
            "schedctl": (f"127.0.0.1:{api.port}", {"pod": "sglang-0"}),
        })
        try:
            prometheus.start()
            sidecar.tick()  # the sidecar's series, ticked once
            assert wait_until(lambda: len(prometheus.query("up == 1")) == 2, 60), prometheus.log_tail()
            time.sleep(3 * SCRAPE_INTERVAL_S)
            yield Fleet(server, prometheus, sidecar)
        finally:
            prometheus.stop()
            api.stop()
            sidecar.close()


def _params() -> Any:
    text = Path("config/sidecar.sglang.toml").read_text()
    assert "stale_hold_ticks = 2 " in text
    return load_settings("config/sidecar.sglang.toml").controller_params().model_copy(update={"mode": "active"})


def _bucket_width(bounds: list[float], x: float) -> float:
    """Width of the histogram bucket that holds ``x`` (SGLang's TTFT buckets)."""
    i = bisect.bisect_left(bounds, x)
    return bounds[min(i, len(bounds) - 1)] - (bounds[i - 1] if i > 0 else 0.0)


def test_promql_window_equals_the_engine_scrape_window(fleet: Fleet) -> None:
    direct = SGLangAdapter(fleet.server.url, timeout_s=10.0)
    via = fleet.via_prometheus()
    try:
        base_direct, base_via = direct.observe(), via.observe()
        assert not base_via.stale, base_via.stale_reason
        time.sleep(4 * SCRAPE_INTERVAL_S)  # Prometheus's first sample of the window is from before the burst
        reqs = make_requests(BURST, 1000.0, num_requests=48, seed=3)
        result = run_load(reqs, LoadConfig(url=fleet.server.url, vocab_size=32000, request_timeout_s=120.0))
        assert result.summary.requests == 48 and result.summary.errors == 0
        time.sleep(5 * SCRAPE_INTERVAL_S)  # ... and its last from after it (a longer window: less extrapolation)
        a, b = direct.observe(), via.observe()
    finally:
        direct.close()
        via.close()
    assert not a.stale and not b.stale, (a.stale_reason, b.stale_reason)
    print(f"\nwindow {a.duration_s:.1f} s: completions engine {a.completions} PromQL {b.completions}; "
          "TTFT P50/P90/P99 engine "
          f"{[round(a.ttft.quantile(q), 3) for q in (0.5, 0.9, 0.99)]} PromQL "
          f"{[round(b.ttft.quantile(q), 3) for q in (0.5, 0.9, 0.99)]}; hit rate {a.cache_hit_rate:.3f} / "
          f"{b.cache_hit_rate:.3f}")
    assert a.completions == 48
    # Prometheus's increase() extrapolates the sampled span to the window's ends: at most one scrape interval
    # at each end of the window
    stretch = b.duration_s / (b.duration_s - 2 * 1.1 * SCRAPE_INTERVAL_S)
    assert a.completions <= b.completions <= a.completions * stretch + 1
    assert b.ttft.bucket_upper_s == a.ttft.bucket_upper_s
    finite = [x for x in a.ttft.bucket_upper_s if x != float("inf")]
    for q in (0.5, 0.9, 0.99):
        qa, qb = a.ttft.quantile(q), b.ttft.quantile(q)
        assert abs(qa - qb) <= _bucket_width(finite, qa), (q, qa, qb)
    assert abs(a.tbt.quantile(0.5) - b.tbt.quantile(0.5)) <= _bucket_width(
        [x for x in a.tbt.bucket_upper_s if x != float("inf")], a.tbt.quantile(0.5))
    assert a.cache_hit_rate is not None and b.cache_hit_rate is not None
    # a ratio of two increases, each stretched by its own extrapolation (at most ``stretch``)
    assert a.cache_hit_rate / stretch <= b.cache_hit_rate <= min(1.0, a.cache_hit_rate * stretch)
    assert (a.queue_len, a.running) == (b.queue_len, b.running) == (0, 0)
    assert base_direct.completions == base_via.completions == 0  # both first reads are baselines


def _ticks(service: Service, n: int) -> list[Decision]:
    out = []
    for _ in range(n):
        time.sleep(2.5 * SCRAPE_INTERVAL_S)  # a window of two scrape intervals at least
        out.append(service.tick())
    return out


def _outage(d: Decision) -> tuple[Any, ...]:
    return d.reason, d.rule, d.window.stale


def test_a_prometheus_outage_holds_then_falls_back_like_an_engine_outage(fleet: Fleet) -> None:
    params = _params()
    safe = policy_label(params.guard.safe_policy)
    via_engine = Service(Controller(params, run_id="engine"), SGLangAdapter(fleet.server.url, timeout_s=10.0))
    via_prom = Service(Controller(params, run_id="prom"), fleet.via_prometheus())
    try:
        before = [_ticks(s, 3) for s in (via_engine, via_prom)]
        stale_before = [d.window.stale_reason for ds in before for d in ds if d.window.stale]
        assert not stale_before, stale_before
        assert before[1][0].applied  # the Prometheus-fed sidecar pushes to the engine as the other does
        # the engine goes away for the one (nothing listens at its address), Prometheus for the other
        via_engine.adapter = SGLangAdapter(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, retries=0)
        fleet.prometheus.stop()
        engine_out = _ticks(via_engine, STALE_HOLD_TICKS + 2)
        prom_out = _ticks(via_prom, STALE_HOLD_TICKS + 2)
        fleet.prometheus.start()  # Prometheus back (same storage): windows are read again
        assert wait_until(lambda: not via_prom.tick().window.stale, 60, poll_s=2.5 * SCRAPE_INTERVAL_S)
    finally:
        if fleet.prometheus.proc is None or fleet.prometheus.proc.poll() is not None:
            fleet.prometheus.start()
        for s in (via_engine, via_prom):
            s.adapter.close()  # type: ignore[attr-defined]
    held = [("guard", "stale", True)] * STALE_HOLD_TICKS + [("fallback", "stale", True)] * 2
    assert [_outage(d) for d in engine_out] == held
    assert [_outage(d) for d in prom_out] == held
    assert all("Prometheus" in (d.window.stale_reason or "") for d in prom_out)
    for out, prev in ((engine_out, before[0]), (prom_out, before[1])):
        assert all(d.policy_label == prev[-1].policy_label for d in out[:STALE_HOLD_TICKS])  # held
        assert all(d.policy_label == safe for d in out[STALE_HOLD_TICKS:])
    # the engine itself still answered the Prometheus-fed sidecar: its fallback landed there
    assert any(d.applied for d in prom_out[STALE_HOLD_TICKS:]) or prom_out[STALE_HOLD_TICKS - 1].policy_label == safe
    assert not any(d.applied for d in engine_out)


def test_promql_reads_the_series_the_dashboard_uses(fleet: Fleet) -> None:
    """Every metric name in the Grafana dashboard's queries is in Prometheus, scraped from the real engine and
    the real sidecar."""
    def missing() -> set[str]:
        names = fleet.prometheus.metric_names()
        return {n for n in dashboard_metric_names() if not stored_as(n, names)}

    assert wait_until(lambda: not missing(), 30), missing()
