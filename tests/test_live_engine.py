"""The plugin inside a real SGLang 0.5.23 server on this CPU (marker `live`; scripts/test-sglang.sh runs it).

One server for the module (tests/live_support.py): a tiny random-weight Llama, SGLang started by `schedctl sglang
serve --cpu` (the last test stops it as a service manager would), with a KV cache of 4,096 tokens and at most 4
running requests, so that a burst over shared prefixes forms a queue and the prefixes do not all fit in the cache
(the regime where the order decides the cache hit rate). The load is `schedctl load`'s engine (schedctl.loadgen)
over 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from live_support import child_pids, group_alive, live_server, plugin_state, set_internal_state, wait_until

from schedctl import __version__
from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.guard import GuardParams
from schedctl.controller.reserve_tuner import ReserveParams
from schedctl.controller.service import Service
from schedctl.engine_adapter.base import UnsupportedPolicy
from schedctl.engine_adapter.sglang import channel, metrics, plugin
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.launcher import ServerProcess
from schedctl.loadgen.runner import LoadConfig, LoadResult, run_load
from schedctl.policies.spec import PolicySpec, parse_policy, policy_label
from schedctl.workloads.registry import make_requests

pytestmark = pytest.mark.live

KV_TOKENS = 4096
MAX_RUNNING = 4
VOCAB = 32000  # the tiny model's (tiny_model.TinyLlama)
# 8 system prompts of 1,024 tokens (8,192 > the 4,096-token KV cache), 8 questions each, shuffled, all within
# 64 ms: 64 requests wait behind 4 running ones.
BURST = "gsp:num_groups=8,prompts_per_group=8,system_prompt_len=1024,question_len=64,output_len=8"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--max-total-tokens", str(KV_TOKENS), "--max-running-requests", str(MAX_RUNNING)]
    env = {**os.environ, plugin.TEST_FAULTS_ENV: "1"}
    with live_server(tmp_path_factory.mktemp("live-engine"), args, env, through_cli=True) as srv:
        yield srv


@pytest.fixture()
def adapter(server: ServerProcess) -> Iterator[SGLangAdapter]:
    a = SGLangAdapter(server.url, timeout_s=10.0)
    yield a
    a.close()


def _counters(url: str) -> tuple[float, float]:
    scrape = metrics.parse_scrape(httpx.get(f"{url}/metrics", timeout=10.0).text)
    return (sum(scrape.counters.get(metrics.CACHED_TOKENS, {}).values()),
            sum(scrape.counters.get(metrics.PROMPT_TOKENS, {}).values()))


def _burst(url: str, workload: str = BURST, num_requests: int = 64, seed: int = 1) -> tuple[LoadResult, float]:
    """Send a shuffled burst from a cold cache; the run's result and SGLang's own cache hit rate for it."""
    assert httpx.post(f"{url}/flush_cache", timeout=30.0).status_code == 200
    cached0, prompt0 = _counters(url)
    reqs = make_requests(workload, 1000.0, "regular", num_requests=num_requests, seed=seed)
    result = run_load(reqs, LoadConfig(url=url, vocab_size=VOCAB, request_timeout_s=120.0))
    cached1, prompt1 = _counters(url)
    return result, (cached1 - cached0) / (prompt1 - prompt0)


def test_plugin_is_loaded_through_its_entry_point(server: ServerProcess) -> None:
    state = plugin_state(server.url)
    assert state["plugin_version"] == __version__
    assert {channel.KEY_KIND, channel.KEY_K, channel.KEY_VERSION} <= set(state)


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "klpm:4", "klpm:2", "slai:strict_first=true", "hrrn", "spf",
                                    "lpm-aging:64", "sglang:fcfs", "sglang:lpm", "sglang:hrrn", "off"])
def test_each_policy_kind_is_applied_and_read_back(adapter: SGLangAdapter, server: ServerProcess,
                                                   policy: str) -> None:
    spec: PolicySpec | None = None if policy == "off" else parse_policy(policy)
    adapter.apply(spec)
    _, active = adapter.status()
    assert (None if active is None else policy_label(active)) == (None if spec is None else policy_label(spec))
    assert plugin_state(server.url)["policy"] == ("off" if spec is None else policy_label(spec))


@pytest.mark.parametrize("values", [
    {channel.KEY_KIND: 9, channel.KEY_K: 0},  # a kind this plugin does not know
    {channel.KEY_KIND: channel.KIND_SLAI, channel.KEY_K: 7},  # slai flags out of range
    {channel.KEY_KIND: channel.KIND_KLPM, channel.KEY_K: 2.5},  # k not an integer
])
def test_an_invalid_push_answers_false_and_changes_nothing(adapter: SGLangAdapter, server: ServerProcess,
                                                           values: dict[str, float]) -> None:
    adapter.apply(parse_policy("klpm:3"))
    before = plugin_state(server.url)
    answer = set_internal_state(server.url, {**values, channel.KEY_VERSION: before[channel.KEY_VERSION] + 1})
    assert answer == [False]
    after = plugin_state(server.url)
    assert {k: after[k] for k in channel.KEYS} == {k: before[k] for k in channel.KEYS}
    assert after["policy"] == "klpm:3"


def test_sarathi_is_refused_before_anything_is_sent(adapter: SGLangAdapter, server: ServerProcess) -> None:
    version = plugin_state(server.url)[channel.KEY_VERSION]
    with pytest.raises(UnsupportedPolicy):
        adapter.apply(parse_policy("sarathi"))
    assert plugin_state(server.url)[channel.KEY_VERSION] == version


def test_order_decides_cache_hits_and_tail_latency_in_the_real_scheduler(adapter: SGLangAdapter,
                                                                         server: ServerProcess) -> None:
    runs: dict[str, tuple[LoadResult, float]] = {}
    for policy in ["fcfs", "lpm", "klpm:4", "off"]:  # off: SGLang's own --schedule-policy lpm
        adapter.apply(None if policy == "off" else parse_policy(policy))
        runs[policy] = _burst(server.url)
    for result, _ in runs.values():
        assert result.summary.requests == 64 and result.summary.errors == 0
    hit = {p: h for p, (_, h) in runs.items()}
    p99 = {p: r.summary.ttft_p99_s for p, (r, _) in runs.items()}
    for policy in ["lpm", "klpm:4"]:
        assert hit[policy] > hit["fcfs"] + 0.1, hit
        assert p99[policy] < p99["fcfs"], p99
    # below 128 waiting the plugin's lpm keeps SGLang's in-batch deprioritisation: never fewer cache hits
    assert hit["lpm"] >= hit["off"] - 0.01, hit


def test_a_fault_in_the_plugins_ordering_leaves_sglang_serving(adapter: SGLangAdapter, server: ServerProcess) -> None:
    adapter.apply(parse_policy("lpm"))
    before = plugin_state(server.url)["fallbacks"].get("order", 0)
    assert set_internal_state(server.url, {plugin.KEY_TEST_FAULT: 1}) == [True]
    try:
        result, _ = _burst(server.url, num_requests=24, seed=2)
        state = plugin_state(server.url)
    finally:
        set_internal_state(server.url, {plugin.KEY_TEST_FAULT: 0})
    assert result.summary.requests == 24 and result.summary.errors == 0 and result.summary.timeouts == 0
    assert state["fallbacks"].get("order", 0) > before  # SGLang's own order stood for those passes
    assert state["policy"] == "lpm"
    healthy_before = plugin_state(server.url)["fallbacks"].get("order", 0)
    result, _ = _burst(server.url, num_requests=16, seed=3)
    assert result.summary.errors == 0
    assert plugin_state(server.url)["fallbacks"].get("order", 0) == healthy_before  # ordering works again


def _sample(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The sum over series of each named sample in one /metrics answer (prometheus-client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10.0).text):
        for s in family.samples:
            if s.name in out:
                out[s.name] += s.value
    return out


def _reserve_run(url: str, seed: int) -> tuple[float, float]:
    """Four 600-token prompts with up to 800 output tokens each, at once: (most requests running at one time,
    retractions).

    Sent without ignore_eos, as real traffic is: SGLang reserves all of a fixed-length request's outputs whatever
    the conservativeness. Running all four needs 4 x 1,400 = 5,600 KV tokens at the end (the cache holds 4,096):
    how many SGLang admits depends on the reserve it keeps for the outputs of those already running."""
    running, retracted = "sglang:num_running_reqs", "sglang:num_retracted_requests_total"
    before = _sample(url, (retracted,))[retracted]
    reqs = make_requests("gsp:num_groups=4,prompts_per_group=1,system_prompt_len=584,question_len=16,output_len=800",
                         1000.0, "regular", num_requests=4, seed=seed)
    most, done = 0.0, threading.Event()

    def watch() -> None:
        nonlocal most
        while not done.is_set():
            most = max(most, _sample(url, (running,))[running])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run_load(reqs, LoadConfig(url=url, vocab_size=VOCAB, request_timeout_s=180.0, ignore_eos=False))
    finally:
        done.set()
        watcher.join()
    assert result.summary.requests == 4 and result.summary.errors == 0
    return most, _sample(url, (retracted,))[retracted] - before


def test_conservativeness_is_set_at_run_time_read_back_and_changes_admission(adapter: SGLangAdapter,
                                                                            server: ServerProcess) -> None:
    adapter.apply(parse_policy("fcfs"))
    try:
        careful = adapter.set_conservativeness(2.0)
        assert careful["schedule_conservativeness"] == 2.0 and careful["new_token_ratio_init"] == 1.0  # min(1.4, 1)
        careful_running, careful_retracted = _reserve_run(server.url, seed=5)
        eager = adapter.set_conservativeness(0.1)
        assert eager["new_token_ratio_init"] == pytest.approx(0.07)  # SGLang's 0.7 x 0.1
        eager_running, eager_retracted = _reserve_run(server.url, seed=6)
        # full reserve: two fit (2 x 1,400 <= 4,096 < 3 x 1,400) and nothing is retracted; a 7% reserve admits more
        print(f"conservativeness 2.0: {careful_running:g} running at most, {careful_retracted:g} retracted; "
              f"0.1: {eager_running:g} running at most, {eager_retracted:g} retracted")
        assert careful_running == 2 and careful_retracted == 0
        assert eager_running > careful_running
        for bad in (0, -1, 10.5):
            assert set_internal_state(server.url, {"schedctl_schedule_conservativeness": bad}) == [False]
        assert adapter.reserve() is not None and adapter.reserve()["schedule_conservativeness"] == 0.1  # type: ignore[index]
    finally:
        adapter.set_conservativeness(1.0)  # the server's start-up value, for the tests after this one


def test_the_reserve_tuner_raises_conservativeness_on_real_retractions_and_sglang_reads_it_back(
        adapter: SGLangAdapter, server: ServerProcess) -> None:
    """The sidecar's loop (Service.tick every 1.5 s, as run_realtime ticks) with [reserve] on, starting at 0.1,
    while requests that may stop early (no ignore_eos) retract under that small reserve: the tuner sees the
    retractions in SGLang's /metrics, raises the value, pushes it, and the scheduler reports it in /server_info."""
    params = ControllerParams(initial_policy="fcfs", guard=GuardParams(min_dwell_ticks=1_000_000, safe_policy="fcfs"),
                              reserve=ReserveParams(enabled=True, arms=[0.1, 0.3, 1.0, 2.0], initial=0.1,
                                                    min_dwell_ticks=1))
    service = Service(Controller(params), adapter, clock=time.time)
    done = threading.Event()
    runs: list[tuple[float, float]] = []

    def load() -> None:
        try:
            for seed in (11, 12, 13):
                runs.append(_reserve_run(server.url, seed=seed))
        finally:
            done.set()

    try:
        first = service.tick()  # the baseline scrape; pushes fcfs and 0.1
        assert first.reserve is not None and first.reserve.applied and first.reserve.value == 0.1
        loader = threading.Thread(target=load)
        loader.start()
        decisions = []
        deadline = time.monotonic() + 300
        while not done.is_set() and time.monotonic() < deadline:
            time.sleep(1.5)
            decisions.append(service.tick())
        loader.join()
        decisions.append(service.tick())
        raised = [d.reserve for d in decisions if d.reserve is not None and d.reserve.action == "raise"]
        print(f"runs (most running, retracted): {runs}; reserve moves: "
              f"{[(r.previous, r.value, r.retractions, r.readback) for r in raised]}")
        assert raised, [d.reserve for d in decisions]
        assert all(r.retractions and r.applied for r in raised)
        assert raised[0].readback is not None and raised[0].readback["schedule_conservativeness"] == raised[0].value
        assert raised[0].readback["new_token_ratio_init"] == pytest.approx(min(0.7 * raised[0].value, 1.0))
        now = adapter.reserve()
        assert now is not None and now["schedule_conservativeness"] == decisions[-1].reserve.value > 0.1  # type: ignore[union-attr]
    finally:
        adapter.set_conservativeness(1.0)


def test_serve_stops_its_whole_process_group_on_sigterm(server: ServerProcess) -> None:
    """Last in the module: SIGTERM to `schedctl sglang serve` alone (as systemd or kubelet sends it)."""
    assert server.proc is not None and server.healthy()
    (launcher,) = child_pids(server.proc.pid)  # SGLang's launcher, in a process group of its own
    sglang_group = os.getpgid(launcher)
    assert sglang_group != os.getpgid(server.proc.pid) and len(child_pids(launcher)) >= 2  # scheduler, detokenizer
    os.kill(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 130
    assert wait_until(lambda: not group_alive(sglang_group), 30), "SGLang's processes outlived serve"
    assert not server.healthy()
