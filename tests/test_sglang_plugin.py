"""The SGLang plugin against SGLang's real code (marker `sglang`; run by scripts/test-sglang.sh in .venv-sglang).

Real parts: the plugin is loaded through SGLang's load_plugins() (entry point group sglang.srt.plugins, the
SGLANG_PLUGINS whitelist, HookRegistry); queues are SGLang's own Req objects, ordered by SGLang's own
SchedulePolicy against SGLang's own RadixCache; the control channel goes through SGLang's own
SchedulerInternalStateController.set_internal_state. The one stand-in is the Scheduler object the controller
holds (a real one needs a GPU and a model): it carries only the SchedulePolicy, which is all our keys read.
"""

from __future__ import annotations

import logging
import os
import sys
from array import array
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from schedctl.engine_adapter.sglang import channel, metrics, plugin, plugin_state
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.cpu_shims import SHIM_ROOTS
from schedctl.engine_adapter.sglang.launcher import build_command
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, SLAISpec, policy_label
from schedctl.policies.waiting import klpm_order

pytestmark = pytest.mark.sglang

STUBS = SHIM_ROOTS["torchvision"]  # the torchvision stand-in (cpu_shims/README.md)


@pytest.fixture(scope="module")
def sg() -> SimpleNamespace:
    """Import SGLang's scheduler code on the CPU and load plugins the way every SGLang process does."""
    pytest.importorskip("sglang")
    # transformers caches "is torchvision available" on first ask; ask before the stand-in is importable, so
    # transformers treats torchvision as absent while SGLang's unconditional `import torchvision` still works.
    from transformers.utils.import_utils import is_torchvision_available

    is_torchvision_available()
    sys.path.insert(0, str(STUBS))
    os.environ["SGLANG_PLUGINS"] = "schedctl"

    import torch
    from sglang.srt.managers.io_struct import GetInternalStateReqOutput, SetInternalStateReq
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.managers.schedule_policy import SchedulePolicy
    from sglang.srt.managers.scheduler_components.internal_state import SchedulerInternalStateController
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.runtime_context import SpawnRanks, publish, reset_context
    from sglang.srt.sampling.sampling_params import SamplingParams
    from sglang.srt.server_args import ServerArgs

    reset_context()  # what sglang.test.test_utils.published_topology does (that module needs `datasets`)
    publish(ServerArgs(model_path="dummy", device="cpu"), role="test", ranks=SpawnRanks(world_rank=0, dp_rank=None))
    load_plugins()
    return SimpleNamespace(
        torch=torch,
        Req=Req,
        SamplingParams=SamplingParams,
        SchedulePolicy=SchedulePolicy,
        RadixCache=RadixCache,
        RadixKey=RadixKey,
        InsertParams=InsertParams,
        MatchPrefixParams=MatchPrefixParams,
        Controller=SchedulerInternalStateController,
        SetReq=SetInternalStateReq,
        StateOut=GetInternalStateReqOutput,
        HookRegistry=HookRegistry,
    )


@pytest.fixture()
def state(monkeypatch: pytest.MonkeyPatch) -> plugin.PluginState:
    fresh = plugin.PluginState()
    monkeypatch.setattr(plugin, "STATE", fresh)
    return fresh


# -- helpers -----------------------------------------------------------------------------------------------------
A = list(range(100))  # cached prefixes
B = list(range(1000, 1060))
C = list(range(2000, 2040))


def cold(i: int, n: int = 20) -> list[int]:
    """A prompt no other prompt shares a token with."""
    return list(range(100_000 + 1000 * i, 100_000 + 1000 * i + n))


def make_cache(sg: SimpleNamespace, *prefixes: list[int]) -> Any:
    cache = sg.RadixCache.create_simulated()
    for ids in prefixes:
        cache.insert(sg.InsertParams(key=sg.RadixKey(array("q", ids)), value=sg.torch.arange(len(ids))))
    return cache


def make_reqs(sg: SimpleNamespace, prompts: list[list[int]], prefix: str = "r") -> list[Any]:
    return [
        sg.Req(f"{prefix}{i}", "", array("q", p), sg.SamplingParams(max_new_tokens=8)) for i, p in enumerate(prompts)
    ]


def cache_match(sg: SimpleNamespace, cache: Any, req: Any) -> int:
    """The match length asked of SGLang's tree directly, independently of the scheduler pass."""
    key = sg.RadixKey(array("q", list(req.origin_input_ids)))
    return int(cache.match_prefix(sg.MatchPrefixParams(key=key)).device_prefix_len)


def controller_for(sg: SimpleNamespace, policy: Any) -> Any:
    return sg.Controller(SimpleNamespace(policy=policy), record_step_time=False)


def push(sg: SimpleNamespace, ctl: Any, server_args: dict[str, Any]) -> bool:
    return bool(ctl.set_internal_state(sg.SetReq(server_args=server_args)).updated)


def rids(reqs: list[Any]) -> list[str]:
    return [r.rid for r in reqs]


PROMPTS = [cold(0), A + cold(1, 10), B + cold(2, 10), C + cold(3, 10), cold(4), A[:50] + cold(5, 10), B + cold(6, 10),
           cold(7), A + cold(8, 10)]  # fmt: skip


# -- the entry point ---------------------------------------------------------------------------------------------
def test_plugin_loads_through_the_entry_point_and_hook_registry(sg: SimpleNamespace) -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert eps.get("schedctl") == "schedctl.engine_adapter.sglang.plugin:register"
    for target in (plugin.TARGET_CALC_PRIORITY, plugin.TARGET_SORT_LPM, plugin.TARGET_UPDATE_HANDLERS,
                   plugin.TARGET_GET_STATE):  # fmt: skip
        assert target in sg.HookRegistry._patched
    assert sg.SchedulePolicy.calc_priority.__wrapped__ is not None


# -- ordering ----------------------------------------------------------------------------------------------------
def test_klpm_order_equals_shared_klpm_on_sglang_matches(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    cache = make_cache(sg, A, B, C)
    reqs = make_reqs(sg, PROMPTS)
    policy = sg.SchedulePolicy("lpm", cache, False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(KLPMSpec(k=3), 1))

    queue = list(reqs)
    policy.calc_priority(queue)
    lens = [cache_match(sg, cache, r) for r in reqs]
    assert lens == [0, 100, 60, 40, 0, 50, 60, 0, 100]
    assert [r.num_matched_prefix_tokens for r in reqs] == lens  # SGLang's own matching ran
    expected = klpm_order(reqs, lens, 3)
    assert rids(queue) == rids(expected)
    assert rids(queue) != rids(klpm_order(reqs, lens, None)) and rids(queue) != rids(reqs)  # neither LPM nor FCFS

    # SGLang admits a prefix of the order; the next pass continues the k-LPM cycle from there.
    admitted, queue = queue[:2], queue[2:]
    for r in admitted:
        cache.insert(sg.InsertParams(key=sg.RadixKey(array("q", list(r.origin_input_ids))),
                                     value=sg.torch.arange(len(r.origin_input_ids))))  # fmt: skip
    policy.calc_priority(queue)
    left = [r for r in reqs if r not in admitted]
    lens = [cache_match(sg, cache, r) for r in left]
    assert state.picks == 2
    assert rids(queue) == rids(klpm_order(left, lens, 3, picks=2))


def test_in_batch_deprioritisation_is_kept(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    shared_cold = cold(50, 40)  # a prefix not in the cache, shared by two waiting requests
    prompts = [shared_cold + cold(51, 5), A + cold(52, 5), shared_cold + cold(53, 5), cold(54)]
    cache = make_cache(sg, A)
    reqs = make_reqs(sg, prompts)
    policy = sg.SchedulePolicy("lpm", cache, False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(KLPMSpec(k=2), 1))
    queue = list(reqs)
    policy.calc_priority(queue)
    head = [reqs[0], reqs[1], reqs[3]]
    assert rids(queue) == [*rids(klpm_order(head, [0, 100, 0], 2)), "r2"]  # r2 waits for r0's prefix


def test_slai_prefill_order_shortest_prompt_first_and_strict_class(
    sg: SimpleNamespace, state: plugin.PluginState
) -> None:
    # Prompt lengths 30, 10, 50, 20, 10; the cache holds A, which the 50-token prompt starts with: SLAI orders by the
    # whole prompt (the paper's known prompt length), not by what the cache leaves, so the match does not move it.
    prompts = [cold(0, 30), cold(1, 10), A[:40] + cold(2, 10), cold(3, 20), cold(4, 10)]
    reqs = make_reqs(sg, prompts)
    reqs[2].priority, reqs[3].priority = 5, 5  # SGLang's per-request priority: above the default marks "strict"
    policy = sg.SchedulePolicy("fcfs", make_cache(sg, A), False, False, False)  # no radix matching needed
    ctl = controller_for(sg, policy)
    assert push(sg, ctl, channel.encode_policy(FCFSSpec(), 1))
    queue = list(reqs)
    policy.calc_priority(queue)  # the plugin ranks arrivals in the order it first sees them
    assert push(sg, ctl, channel.encode_policy(SLAISpec(), 1))
    queue.reverse()
    policy.calc_priority(queue)
    assert rids(queue) == ["r1", "r4", "r3", "r0", "r2"]  # shortest first, ties to the oldest

    assert push(sg, ctl, channel.encode_policy(SLAISpec(strict_first=True), 2))
    policy.calc_priority(queue)
    assert rids(queue) == ["r3", "r2", "r1", "r4", "r0"]  # the strict class first, shortest first within each

    assert push(sg, ctl, channel.encode_policy(SLAISpec(strict_first=True, prefill_order="fcfs"), 3))
    policy.calc_priority(queue)
    assert rids(queue) == ["r2", "r3", "r0", "r1", "r4"]
    shown = plugin._get_internal_state_hook(sg.StateOut(internal_state={}), ctl).internal_state
    assert shown[channel.SERVER_INFO_KEY]["policy"] == policy_label(SLAISpec(strict_first=True,
                                                                             prefill_order="fcfs"))

    # Under --schedule-low-priority-values-first, a priority below the default is the one SGLang serves first.
    low_first = sg.SchedulePolicy("fcfs", make_cache(sg, A), False, False, True)
    assert push(sg, controller_for(sg, low_first), channel.encode_policy(SLAISpec(strict_first=True), 4))
    reqs[2].priority, reqs[3].priority, reqs[0].priority = None, 5, -1
    queue = list(reqs)
    low_first.calc_priority(queue)
    assert rids(queue) == ["r0", "r1", "r4", "r3", "r2"]


def test_set_internal_state_changes_the_next_pass(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    cache = make_cache(sg, A, B, C)
    reqs = make_reqs(sg, PROMPTS)
    policy = sg.SchedulePolicy("lpm", cache, False, False, False)
    ctl = controller_for(sg, policy)
    assert push(sg, ctl, channel.encode_policy(LPMSpec(), 1))
    queue = list(reqs)
    policy.calc_priority(queue)
    assert rids(queue[:2]) == ["r1", "r8"]  # longest matches first, ties to the oldest

    assert push(sg, ctl, channel.encode_policy(FCFSSpec(), 2))
    policy.calc_priority(queue)
    assert rids(queue) == rids(reqs)  # arrival order, whatever the list order was

    out = plugin._get_internal_state_hook(sg.StateOut(internal_state={}), ctl)
    shown = out.internal_state[channel.SERVER_INFO_KEY]
    assert shown["policy"] == "fcfs" and shown[channel.KEY_VERSION] == 2
    # The adapter reads exactly what the plugin writes (no request is sent: the client is only built).
    adapter = SGLangAdapter("http://127.0.0.1:9")
    assert adapter._active_from({"internal_states": [out.internal_state]}) == (FCFSSpec(), 2)
    adapter.close()


def test_bad_pushes_are_rejected_whole(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    policy = sg.SchedulePolicy("lpm", make_cache(sg, A), False, False, False)
    ctl = controller_for(sg, policy)
    assert push(sg, ctl, channel.encode_policy(KLPMSpec(k=4), 1))
    bad = [
        {channel.KEY_KIND: 9, channel.KEY_K: 0, channel.KEY_VERSION: 2},  # a later kind: not in this plugin
        {channel.KEY_KIND: 4, channel.KEY_K: 4, channel.KEY_VERSION: 2},  # slai with flags it does not know
        {channel.KEY_KIND: 3, channel.KEY_K: 2.5, channel.KEY_VERSION: 2},
        {channel.KEY_KIND: 1, channel.KEY_K: 1, channel.KEY_VERSION: 2, "schedule_policy": 1},  # not a known key
    ]
    for server_args in bad:
        assert not push(sg, ctl, server_args)
    assert (state.kind, state.k, state.policy_version) == (channel.KIND_KLPM, 4, 1)
    fcfs_base = sg.SchedulePolicy("fcfs", make_cache(sg, A), False, False, False)
    assert not push(sg, controller_for(sg, fcfs_base), channel.encode_policy(LPMSpec(), 3))
    assert push(sg, controller_for(sg, fcfs_base), channel.encode_policy(FCFSSpec(), 3))


def test_exception_in_our_code_leaves_sglang_order(
    sg: SimpleNamespace, state: plugin.PluginState, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(sg, A, B, C)
    sglang_queue = make_reqs(sg, PROMPTS)
    sg.SchedulePolicy("lpm", cache, False, False, False).calc_priority(sglang_queue)  # plugin off: SGLang's LPM

    reqs = make_reqs(sg, PROMPTS)
    policy = sg.SchedulePolicy("lpm", cache, False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(KLPMSpec(k=2), 1))

    def broken(*_a: object, **_k: object) -> list[object]:
        raise RuntimeError("injected")

    monkeypatch.setattr(plugin_state, "order_waiting", broken)
    queue = list(reqs)
    with caplog.at_level(logging.ERROR, logger="schedctl.sglang.plugin"):
        policy.calc_priority(queue)
        policy.calc_priority(queue)
    assert rids(queue) == rids(sglang_queue)
    assert state.fallbacks["order"] == 2
    assert len([r for r in caplog.records if "injected" in r.getMessage()]) == 1  # logged once per kind


def test_long_queue_keeps_klpm_at_bounded_cost(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    n = 150
    hot = {5, 10, *range(140, 150)}
    prompts = [A + cold(i, 5) if i in hot else cold(i) for i in range(n)]
    cache = make_cache(sg, A)

    plain = make_reqs(sg, prompts)
    queue = list(plain)
    sg.SchedulePolicy("lpm", cache, False, False, False).calc_priority(queue)
    assert queue == plain  # SGLang alone: > 128 waiting, no matching, the list stays as it is

    reqs = make_reqs(sg, prompts)
    policy = sg.SchedulePolicy("lpm", cache, False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(LPMSpec(), 1))
    queue = list(reqs)
    policy.calc_priority(queue)
    matched = [r for r in reqs if getattr(r, "_schedctl_matched_pass", None) == state.passes]
    assert len(matched) == plugin.LONG_QUEUE_MATCH_BUDGET  # the oldest 128, never-matched first
    assert rids(queue[:2]) == ["r5", "r10"]
    policy.calc_priority(queue)  # the 22 never matched are matched now
    assert rids(queue[:12]) == ["r5", "r10", *(f"r{i}" for i in range(140, 150))]
    assert state.long_queue_passes == 2


def test_long_queue_holds_back_requests_sharing_a_cold_prefix(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    shared_cold = cold(900, 40)  # not in the cache: the first of r0..r9 computes it, the others then hit it
    prompts = [shared_cold + cold(i, 5) if i < 10 else cold(i) for i in range(150)]
    cache = make_cache(sg, A)
    reqs = make_reqs(sg, prompts)
    policy = sg.SchedulePolicy("lpm", cache, False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(LPMSpec(), 1))
    queue = list(reqs)
    policy.calc_priority(queue)
    policy.calc_priority(queue)  # every request matched (> 128 waiting: 128 a pass)
    assert state.long_queue_passes == 2
    assert rids(queue[:3]) == ["r0", "r10", "r11"]  # one of the ten that share the cold prefix goes ahead
    assert sorted(rids(queue[-9:])) == sorted(f"r{i}" for i in range(1, 10))


def test_order_is_the_same_on_every_rank(sg: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 'ranks' (fresh plugin state, cache and Req objects each) with different clocks give the same orders."""
    orders = []
    for rank, clock_skew_s in ((0, 0.0), (1, 123.4)):
        monkeypatch.setattr(plugin, "STATE", plugin.PluginState())
        cache = make_cache(sg, A, B, C)
        reqs = make_reqs(sg, PROMPTS)
        for i, r in enumerate(reqs):
            r.time_stats.wait_queue_entry_time = clock_skew_s + (len(reqs) - i) * 0.01 * (rank + 1)
        policy = sg.SchedulePolicy("lpm", cache, False, False, False)
        assert push(sg, controller_for(sg, policy), channel.encode_policy(KLPMSpec(k=2), 1))
        queue, seen = list(reqs), []
        while queue:
            policy.calc_priority(queue)
            seen.append(rids(queue))
            queue = queue[1:]  # admit one per pass
        orders.append(seen)
    assert orders[0] == orders[1]


# -- what the adapter and launcher rely on ------------------------------------------------------------------------
def test_metric_names_come_from_sglangs_own_collectors(sg: SimpleNamespace) -> None:
    """SGLang's real collectors write into a registry; our parser must find every name the adapter reads."""
    from prometheus_client import REGISTRY, generate_latest
    from sglang.srt.observability.metrics_collector import SchedulerMetricsCollector, TokenizerMetricsCollector
    from sglang.srt.server_args import ServerArgs

    server_args = ServerArgs(model_path="dummy", device="cpu")
    labels = {"model_name": "m"}
    tok = TokenizerMetricsCollector(server_args=server_args, labels=labels)
    sched_labels = {"model_name": "m", "engine_type": "unified", "tp_rank": 0, "pp_rank": 0, "moe_ep_rank": 0}
    sched = SchedulerMetricsCollector(labels=sched_labels, server_args=server_args)
    tok.observe_time_to_first_token(labels, 0.3, stream=False)
    tok.observe_inter_token_latency(labels, 0.05, 2)
    tok.observe_one_finished_request(labels, 100, 10, 40, 1.0, False, is_streaming=False)
    tok.observe_one_aborted_request(labels)
    for gauge, value in ((sched.num_queue_reqs, 3), (sched.num_running_reqs, 2), (sched.cache_hit_rate, 0.4),
                         (sched.token_usage, 0.5)):  # fmt: skip
        gauge.labels(**sched_labels).set(value)
    sched.increment_retracted_reqs(num_retracted_reqs=2, num_retracted_input_tokens=100,
                                   num_retracted_output_tokens=10)  # what Scheduler.update_running_batch calls

    scrape = metrics.parse_scrape(generate_latest(REGISTRY).decode())
    found = set(scrape.counters) | set(scrape.histograms) | set(scrape.gauges)
    assert set(metrics.METRICS_READ) <= found, set(metrics.METRICS_READ) - found
    assert metrics.gauge_sum(scrape, metrics.QUEUE) == 3
    assert scrape.counters[metrics.CACHED_TOKENS] and scrape.histograms[metrics.TTFT]
    assert metrics.RETRACTED_FAMILY in scrape.families
    assert metrics.diff(metrics.Scrape(), scrape).counters[metrics.RETRACTED] == 2


def test_launcher_flags_parse_with_sglangs_own_parser(sg: SimpleNamespace, tmp_path: Path) -> None:
    from sglang.srt.server_args import prepare_server_args

    argv, env = build_command(["--", "--model-path", "dummy", "--port", "30001"], request_metrics_dir=tmp_path,
                              environ={"SGLANG_PLUGINS": "other"})  # fmt: skip
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    assert env["SGLANG_PLUGINS"] == "other,schedctl"
    server_args = prepare_server_args(argv[3:])
    assert server_args.enable_metrics and server_args.export_metrics_to_file
    assert server_args.export_metrics_to_file_dir == str(tmp_path.absolute())
    assert server_args.schedule_policy == "lpm" and server_args.port == 30001
    argv2, _ = build_command(["--model-path", "dummy", "--schedule-policy", "fcfs"], environ={})
    assert prepare_server_args(argv2[3:]).schedule_policy == "fcfs"  # the operator's choice stands
