"""The SGLang adapter over a real socket on 127.0.0.1, against a server that speaks SGLang's formats.

The server is the stand-in of tests/sglang_standin.py (http.server in a thread, SGLang's metric names, labels
and default buckets, /server_info and /set_internal_state answers shaped as SGLang's, the plugin's readback
included). It stops when each test ends. Needs no SGLang (core test suite).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sglang_standin import ITL_BUCKETS_S, TTFT_BUCKETS_S, FakeSGLang, FakeSGLangMetrics, running_standin

from schedctl.engine_adapter.base import EngineAdapter, EngineUnavailable, UnsupportedPolicy
from schedctl.engine_adapter.sglang import channel, metrics
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.export import RequestExportFollower
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, SarathiSpec, SLAISpec, parse_policy


@pytest.fixture()
def engine() -> Iterator[tuple[FakeSGLang, str]]:
    with running_standin() as server:
        yield server.fake, server.url


def make_adapter(url: str, **kw: Any) -> tuple[SGLangAdapter, list[float]]:
    slept: list[float] = []
    clock = iter(float(i) for i in range(10**6))
    kw.setdefault("timeout_s", 2.0)
    adapter = SGLangAdapter(url, retries=2, backoff_s=0.01, sleep=slept.append, clock=lambda: next(clock), **kw)
    return adapter, slept


def bucket_of(x: float, bounds: list[float]) -> tuple[float, float]:
    lower = 0.0
    for upper in bounds:
        if x <= upper:
            return lower, upper
        lower = upper
    return lower, float("inf")


# -- windows from histogram deltas ----------------------------------------------------------------------------------
def test_window_quantiles_match_raw_samples_within_bucket_resolution(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    adapter, _ = make_adapter(url)
    assert isinstance(adapter, EngineAdapter)
    rng = np.random.default_rng(7)
    for x in rng.uniform(5.0, 30.0, 300):  # before the window: slow, must not leak into it
        fake.metrics.finish(float(x), prompt=100, cached=0)
    fake.metrics.set_gauges(num_queue_reqs=4, num_running_reqs=2, cache_hit_rate=0.1, token_usage=0.3)
    first = adapter.observe()
    assert first.duration_s == 0 and first.ttft.count == 0 and first.queue_len == 4

    window = rng.lognormal(mean=np.log(0.5), sigma=0.6, size=2000)
    itl = rng.uniform(0.005, 0.09, 500)
    for i, x in enumerate(window):
        fake.metrics.finish(float(x), prompt=200, cached=150 if i % 2 else 50, stream=bool(i % 3))
    for x in itl:
        fake.metrics.itl.labels("m").observe(float(x))
    obs = adapter.observe()

    assert obs.completions == 2000 and obs.duration_s == 1.0
    assert obs.cache_hit_rate == pytest.approx(100 / 200)
    assert obs.prompt_tokens_mean == pytest.approx(200)
    for dist, raw, bounds in ((obs.ttft, window, TTFT_BUCKETS_S), (obs.tbt, itl, ITL_BUCKETS_S)):
        assert dist.count == len(raw) and not dist.samples_s
        ordered = np.sort(raw)
        for q in (0.5, 0.9, 0.99):
            pos = q * (len(raw) - 1)
            lo, _ = bucket_of(float(ordered[int(np.floor(pos))]), bounds)
            _, hi = bucket_of(float(ordered[int(np.ceil(pos))]), bounds)
            assert lo - 1e-9 <= dist.quantile(q) <= hi + 1e-9, (q, dist.quantile(q), np.quantile(raw, q))


def test_gauges_are_aggregated_across_ranks(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    fake.metrics.ranks = [{"tp_rank": "0", "dp_rank": "0"}, {"tp_rank": "1", "dp_rank": "0"},  # TP peers: one queue
                          {"tp_rank": "0", "dp_rank": "1"}]  # fmt: skip
    fake.metrics.set_gauges(num_queue_reqs=5, num_running_reqs=3, token_usage=0.2, cache_hit_rate=0.4)
    labels = {"model_name": "m", "engine_type": "unified", "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0",
              "dp_rank": "1"}  # fmt: skip
    fake.metrics.gauges[metrics.TOKEN_USAGE].labels(priority="", **labels).set(0.9)
    fake.metrics.gauges[metrics.QUEUE].labels(priority="7", **labels).set(100)  # per-priority breakdown: ignored
    obs = make_adapter(url)[0].observe()
    assert (obs.queue_len, obs.running) == (10, 6)  # summed over the two DP groups, not the three ranks
    assert obs.kv_utilization == pytest.approx(0.9)  # the fullest DP group
    assert obs.cache_hit_rate == pytest.approx(0.4)


def test_counter_reset_is_a_restart_not_negative_traffic(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    adapter, _ = make_adapter(url)
    for _ in range(50):
        fake.metrics.finish(0.3, prompt=100, cached=10)
    adapter.observe()
    fake.metrics = FakeSGLangMetrics()  # the engine restarted: every counter starts again from zero
    for _ in range(7):
        fake.metrics.finish(2.5, prompt=100, cached=60)
    obs = adapter.observe()
    assert obs.engine_generation == 1
    assert obs.completions == 7 and obs.arrivals >= 7 and obs.ttft.count == 7
    assert obs.cache_hit_rate == pytest.approx(0.6)
    assert 2.0 <= obs.ttft.quantile(0.5) <= 4.0
    assert adapter.observe().engine_generation == 1  # counted once


# -- failures: typed errors, never a crash ------------------------------------------------------------------------
def test_unreachable_engine_gives_engine_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    adapter, slept = make_adapter(f"http://127.0.0.1:{port}")
    with pytest.raises(EngineUnavailable, match="3 tries"):
        adapter.observe()
    assert slept == [0.01, 0.02]  # exponential backoff between the tries
    with pytest.raises(EngineUnavailable):
        adapter.apply(FCFSSpec())


def test_slow_engine_gives_engine_unavailable(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    fake.delay_s = 0.5
    adapter, _ = make_adapter(url, timeout_s=0.05)
    with pytest.raises(EngineUnavailable, match="Timeout"):
        adapter.observe()


@pytest.mark.parametrize(
    "text", ["<html>502 Bad Gateway</html>", "\x00\x01garbage{{{", '# TYPE x counter\nx{a="1" 5\n', ""]
)
def test_garbage_metrics_give_engine_unavailable(engine: tuple[FakeSGLang, str], text: str) -> None:
    fake, url = engine
    fake.metrics_text = text
    with pytest.raises(EngineUnavailable, match="no SGLang metrics"):
        make_adapter(url)[0].observe()


def test_one_bad_family_is_skipped_with_a_warning(
    engine: tuple[FakeSGLang, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = engine
    fake.metrics.set_gauges(num_queue_reqs=3)
    fake.metrics_text = "# HELP broken x\n# TYPE broken gauge\nbroken{a=1 2 3\n" + fake.metrics.text()
    with caplog.at_level(logging.WARNING):
        obs = make_adapter(url)[0].observe()
    assert obs.queue_len == 3
    assert any("unparsable" in r.getMessage() for r in caplog.records)


def test_odd_values_never_crash_the_observation(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    fake.metrics.set_gauges(num_queue_reqs=3, num_running_reqs=2, token_usage=1.7)
    fake.plugin_state = {channel.KEY_KIND: "x", channel.KEY_K: None}  # a garbled plugin readback
    obs = make_adapter(url)[0].observe()
    assert (obs.queue_len, obs.running, obs.kv_utilization, obs.active_policy) == (3, 2, 1.0, None)
    assert not obs.stale
    fake.metrics.set_gauges(num_queue_reqs=float("inf"), num_running_reqs=-3)
    obs = make_adapter(url)[0].observe()
    assert obs.stale and "implausible metrics" in (obs.stale_reason or "") and obs.queue_len == 0


def test_server_errors_are_retried_then_typed(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    fake.status = 503
    adapter, slept = make_adapter(url)
    with pytest.raises(EngineUnavailable, match="HTTP 503"):
        adapter.observe()
    assert fake.hits == 3 and len(slept) == 2


# -- pushing policies -----------------------------------------------------------------------------------------------
def test_apply_pushes_through_set_internal_state(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    adapter, _ = make_adapter(url)
    caps = adapter.capabilities()
    assert caps.engine == "sglang" and caps.policy_kinds == channel.SUPPORTED_KINDS and caps.version == "0.5.23"
    adapter.apply(KLPMSpec(k=3))
    adapter.apply(LPMSpec())
    assert fake.pushes == [
        {channel.KEY_KIND: channel.KIND_KLPM, channel.KEY_K: 3, channel.KEY_VERSION: 1},
        {channel.KEY_KIND: channel.KIND_LPM, channel.KEY_K: channel.K_INF, channel.KEY_VERSION: 2},
    ]
    assert adapter.observe().active_policy == LPMSpec()

    fake.startup_time += 60  # restarted: the plugin forgot everything
    fake.plugin_state = {channel.KEY_KIND: 0, channel.KEY_K: 0, channel.KEY_VERSION: 0}
    obs = adapter.observe()
    assert obs.active_policy is None and obs.engine_generation == 1
    adapter.apply(FCFSSpec())
    assert fake.pushes[-1][channel.KEY_VERSION] == 3  # versions keep going up across engine restarts


def test_apply_refusals_are_unsupported_policy(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    adapter, _ = make_adapter(url)
    with pytest.raises(UnsupportedPolicy, match="sarathi"):
        adapter.apply(SarathiSpec())
    with pytest.raises(UnsupportedPolicy, match="theta_low"):  # SGLang forms its own decode batches
        adapter.apply(SLAISpec(theta_low=2.0))
    assert fake.pushes == []  # refused before any I/O
    fake.accept_push = False
    with pytest.raises(UnsupportedPolicy, match="refused klpm:2"):
        adapter.apply(KLPMSpec(k=2))
    fake.schedule_policy = "fcfs"  # no radix matching: only the orders that need none
    assert adapter.capabilities().policy_kinds == {"fcfs", "slai"}
    fake.plugin = False
    assert adapter.capabilities().policy_kinds == frozenset()
    with pytest.raises(UnsupportedPolicy):
        adapter.apply(FCFSSpec())


def test_channel_round_trip() -> None:
    specs = [FCFSSpec(), LPMSpec(), KLPMSpec(k=1), KLPMSpec(k=7), KLPMSpec(k="inf"), None]
    specs += [parse_policy(p) for p in ("hrrn", "spf", "lpm-aging:64", "sglang:fcfs", "sglang:lpm", "sglang:hrrn",
                                        "sglang:spf")]
    specs += [SLAISpec(strict_first=s, prefill_order=o) for s in (False, True) for o in ("spf", "fcfs")]
    for spec in specs:
        args = channel.encode_policy(spec, 5)
        assert channel.decode_policy(args[channel.KEY_KIND], args[channel.KEY_K]) == spec
    for kind, k in ((9, 0), (channel.KIND_SLAI, 4), (channel.KIND_LPM_AGING, 0), (channel.KIND_SGLANG, 5)):
        with pytest.raises(ValueError):
            channel.decode_policy(kind, k)


def test_push_and_show_commands_over_the_socket(
    engine: tuple[FakeSGLang, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from schedctl.cli import app
    from schedctl.cli.common import fail_cleanly

    fake, url = engine

    def cli(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["schedctl", "sglang", *args, "--url", url])
        return fail_cleanly(app)

    assert cli("push", "slai:strict_first=true") == 0
    assert fake.pushes[-1] == {channel.KEY_KIND: channel.KIND_SLAI, channel.KEY_K: channel.SLAI_STRICT_FIRST,
                               channel.KEY_VERSION: 1}  # fmt: skip
    assert "schedctl policy slai:strict_first=true" in capsys.readouterr().out
    assert cli("push", "slai:theta_low=2") == 2  # refused before any I/O, naming the knob
    assert "theta_low" in capsys.readouterr().err and len(fake.pushes) == 1
    assert cli("push", "off") == 0 and fake.plugin_state[channel.KEY_KIND] == channel.KIND_OFF
    fake.metrics_text = ""  # a server started without --enable-metrics: show reads /server_info only
    assert cli("show") == 0 and "schedctl policy off" in capsys.readouterr().out
    fake.status = 503
    assert cli("show") == 1 and "503" in capsys.readouterr().err


# -- the per-request stream -----------------------------------------------------------------------------------------
def test_request_export_is_followed(tmp_path: Path, engine: tuple[FakeSGLang, str]) -> None:
    _, url = engine
    adapter, _ = make_adapter(url, request_metrics_dir=str(tmp_path))
    assert adapter.take_requests() == []  # nothing exported yet (not even the directory's files)
    rec = {"id": "a", "request_received_ts": 1700000000.5, "first_token_latency": 0.25, "e2e_latency": 2.0,
           "queue_time": 0.1, "prompt_tokens": 300, "cached_tokens": 256, "completion_tokens": 20,
           "request_parameters": "{}"}  # fmt: skip
    first = tmp_path / "sglang-request-metrics-20260101_10.log"
    partial = json.dumps({**rec, "id": "c"})
    first.write_text(json.dumps(rec) + "\nnot json\n" + json.dumps({"id": "no-time"}) + "\n" + partial[:20])
    got = adapter.take_requests()
    assert [r.rid for r in got] == ["a"]
    assert got[0].first_token_s == pytest.approx(1700000000.75) and got[0].cached_tokens == 256
    with first.open("a") as fh:
        fh.write(partial[20:] + "\n")
    (tmp_path / "sglang-request-metrics-20260101_11.log").write_text(json.dumps({**rec, "id": "d"}) + "\n")
    assert [r.rid for r in adapter.take_requests()] == ["c", "d"]
    assert adapter.take_requests() == []
    follower = RequestExportFollower(tmp_path)
    assert len(follower.poll()) == 3 and follower.skipped_lines == 2


def test_retractions_are_the_windows_count_once_per_scheduler_group(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    fake.metrics.ranks = [{"tp_rank": "0", "dp_rank": "0"}, {"tp_rank": "1", "dp_rank": "0"},  # TP peers
                          {"tp_rank": "0", "dp_rank": "1"}]  # fmt: skip
    adapter, _ = make_adapter(url)
    assert adapter.observe().retractions is None  # the first scrape is the baseline: no window yet
    assert adapter.observe().retractions == 0  # the family is declared, with no sample before the first retraction
    fake.metrics.retract(3)  # each DP group retracted 3: 6 in all, whatever the TP ranks repeat
    assert adapter.observe().retractions == 6
    assert adapter.observe().retractions == 0
    fake.metrics_text = fake.metrics.text().replace(metrics.RETRACTED_FAMILY, "sglang:other")
    assert adapter.observe().retractions is None  # an engine that does not export it says nothing


def test_the_reserve_it_runs_is_read_back_in_each_window_and_set(engine: tuple[FakeSGLang, str]) -> None:
    fake, url = engine
    adapter, _ = make_adapter(url)
    assert adapter.observe().conservativeness == 1.0
    readback = adapter.set_conservativeness(0.4)
    assert readback["schedule_conservativeness"] == 0.4
    assert fake.pushes[-1] == {"schedctl_schedule_conservativeness": 0.4}
    assert adapter.observe().conservativeness == 0.4
    with pytest.raises(ValueError, match="must be in"):
        adapter.set_conservativeness(11.0)
    fake.plugin = False
    assert adapter.observe().conservativeness is None
