"""The plugin's hrrn, spf, lpm-aging and sglang: orders on SGLang's real scheduler objects (marker `sglang`).

Same real parts as tests/test_sglang_plugin.py (its fixtures and helpers): SGLang's Req, SchedulePolicy and
RadixCache, the plugin loaded by load_plugins(), pushes through SGLang's own /set_internal_state controller.
Where SGLang has the order built in (hrrn, shortest-prefill-first), the plugin's order is compared with SGLang's.
"""

# ruff: noqa: F811
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from test_sglang_plugin import (  # sg, state: the fixtures, taken as parameters (F811 off above)
    A,
    B,
    cold,
    controller_for,
    make_cache,
    make_reqs,
    push,
    rids,
    sg,  # noqa: F401
    state,  # noqa: F401
)

from schedctl.engine_adapter.sglang import channel, plugin
from schedctl.policies.orders import QueueOrder
from schedctl.policies.spec import LPMSpec, parse_policy
from schedctl.policies.waiting import order_waiting

pytestmark = pytest.mark.sglang

# prompts 100 (A cached), 40 cold, 80 (B: 60 cached), 25 cold, 70 (A[:50] cached): uncached 0?, see below
PROMPTS = [A + cold(0, 20), cold(1, 40), B + cold(2, 20), cold(3, 25), A[:50] + cold(4, 20)]


def pushed(sg: SimpleNamespace, base: str, label: str) -> Any:
    policy = sg.SchedulePolicy(base, make_cache(sg, A, B), False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(parse_policy(label), 1))
    return policy


def test_hrrn_orders_by_sglangs_own_key_and_clock(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    reqs = make_reqs(sg, PROMPTS)  # uncached: 20, 40, 20, 25, 20
    for r, born in zip(reqs, [0, 0, 300, 100, 380], strict=True):
        r.arrival_processed_tokens = born  # what Scheduler._add_request_to_queue snapshots
    policy = pushed(sg, "lpm", "hrrn")
    queue = list(reqs)
    policy.calc_priority(queue, None, processed_tokens=400)
    # ratios (400 - born) / uncached: 20.0, 10.0, 5.0, 12.0, 1.0
    assert rids(queue) == ["r0", "r3", "r1", "r2", "r4"]
    assert state.processed_tokens == 400
    policy.calc_priority(queue, None, processed_tokens=4000)
    # 200, 100, 185, 156, 181: the clock reorders
    assert rids(queue) == ["r0", "r2", "r4", "r3", "r1"]
    lens = [int(r.num_matched_prefix_tokens) for r in reqs]
    assert rids(queue) == rids(order_waiting(reqs, lens, QueueOrder(None, "hrrn"),
                                             lengths=[len(r.origin_input_ids) for r in reqs],
                                             born_tokens=[0, 0, 300, 100, 380], processed_tokens=4000))


def _sglangs_own(sg: SimpleNamespace, state: plugin.PluginState, base: str, reqs: list[Any], **kw: Any) -> list[str]:
    """SGLang's order with the plugin off."""
    assert not state.active
    queue = list(reqs)
    sg.SchedulePolicy(base, make_cache(sg, A, B), False, False, False).calc_priority(queue, None, **kw)
    return rids(queue)


def test_sglang_hrrn_and_spf_equal_sglangs_own(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    reqs = make_reqs(sg, PROMPTS)
    for r, born in zip(reqs, [0, 0, 300, 100, 380], strict=True):
        r.arrival_processed_tokens = born
    own_hrrn = _sglangs_own(sg, state, "hrrn", reqs, processed_tokens=400)
    own_spf = _sglangs_own(sg, state, "shortest-prefill-first", reqs)
    queue = list(reqs)
    pushed(sg, "lpm", "sglang:hrrn").calc_priority(queue, None, processed_tokens=400)
    assert rids(queue) == own_hrrn == ["r0", "r3", "r1", "r2", "r4"]
    for label in ("sglang:spf", "spf"):  # ours: the same key, ties to the oldest (SGLang: entry time)
        queue = list(reqs)
        pushed(sg, "lpm", label).calc_priority(queue)
        assert rids(queue) == own_spf == ["r0", "r2", "r4", "r3", "r1"], label


def test_sglang_lpm_keeps_the_list_above_128_waiting_and_our_lpm_does_not(
    sg: SimpleNamespace, state: plugin.PluginState
) -> None:
    prompts = [cold(i, 10) for i in range(140)] + [A + cold(999, 5)]
    reqs = make_reqs(sg, prompts)
    queue = list(reqs)
    policy = pushed(sg, "lpm", "sglang:lpm")
    for _ in range(3):  # (passes enough for the plugin's long-queue matching to have reached every request)
        policy.calc_priority(queue)
    assert queue == reqs  # SGLang's rule: above 128 waiting, FCFS (the list as it is) ...
    assert state.long_queue_passes == 0  # ... and no prefix matching either (SGLang skips it there)
    queue = list(reqs)
    policy = sg.SchedulePolicy("lpm", make_cache(sg, A, B), False, False, False)
    assert push(sg, controller_for(sg, policy), channel.encode_policy(LPMSpec(), 2))
    policy.calc_priority(queue)  # the plugin matches 128 a pass above 128 waiting (the oldest unmatched first) ...
    policy.calc_priority(queue)
    assert queue[0] is reqs[-1]  # ... so by the second pass ours has LPM at this length: the cached prefix first


def test_lpm_aging_counts_the_passes_a_request_waited(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    starving, hot = make_reqs(sg, [cold(7, 30)], "s") + make_reqs(sg, [A + cold(8, 5)], "h")
    for label, first in (("lpm-aging:64", "s0"), ("lpm", "h0")):
        policy = pushed(sg, "lpm", label)
        state.last_rids = set()
        queue = [starving]
        policy.calc_priority(queue)  # the plugin first sees it
        policy.calc_priority(queue)
        queue.append(hot)  # arrives now: match 100, waited 0 passes; the starving one waited 2 (64 * 2 > 100)
        policy.calc_priority(queue)
        assert queue[0].rid == first, label


def test_pushes_of_the_new_orders_are_validated(sg: SimpleNamespace, state: plugin.PluginState) -> None:
    fcfs_base = sg.SchedulePolicy("fcfs", make_cache(sg, A), False, False, False)
    ctl = controller_for(sg, fcfs_base)
    for label in ("hrrn", "spf", "lpm-aging:8", "sglang:lpm", "sglang:hrrn"):  # they read SGLang's prefix matches
        assert not push(sg, ctl, channel.encode_policy(parse_policy(label), 3)), label
    assert push(sg, ctl, channel.encode_policy(parse_policy("sglang:fcfs"), 3))  # needs no match
    lpm_ctl = controller_for(sg, sg.SchedulePolicy("lpm", make_cache(sg, A), False, False, False))
    for raw in ({channel.KEY_KIND: channel.KIND_LPM_AGING, channel.KEY_K: 0, channel.KEY_VERSION: 4},
                {channel.KEY_KIND: channel.KIND_SGLANG, channel.KEY_K: 9, channel.KEY_VERSION: 4}):
        assert not push(sg, lpm_ctl, raw)
    assert push(sg, lpm_ctl, channel.encode_policy(parse_policy("hrrn"), 5))
    assert state.label() == "hrrn"
