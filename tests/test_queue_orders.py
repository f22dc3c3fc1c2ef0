"""The queue orders beside k-LPM (hrrn, spf, lpm-aging:N, sglang:*): hand-checked cases, the shared queue against
the definition under a changing cache, one-call ordering (what the plugin runs) against the queue (what the
simulator runs), and the simulator under each policy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.orders import (
    QueueOrder,
    RatioScan,
    aging_priority,
    hrrn_ratio,
    queue_order,
    sglang_pass_order,
    spf_work,
)
from schedctl.policies.spec import KLPMSpec, LPMSpec, parse_policy, policy_label
from schedctl.policies.waiting import order_waiting
from schedctl.sim.engine import EngineConfig, SimEngine
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.radix_cache import RadixKVCache
from schedctl.sim.run import Hardware
from schedctl.sim.sglang_pass import SGLangPassQueue
from schedctl.workloads.registry import make_requests

HRRN, SPF = QueueOrder(None, "hrrn"), QueueOrder(None, "spf")


def cached(*prefixes: list[int]) -> RadixKVCache:
    cache = RadixKVCache(1_000_000)
    for p in prefixes:
        cache.insert(p)
    return cache


HOT = list(range(100))


# -- hand-checked ------------------------------------------------------------------------------------------------
def test_hrrn_picks_the_highest_waited_per_uncached_token_and_follows_the_clock() -> None:
    # SGLang's key: (processed_tokens - arrival_processed_tokens) / (len(prompt) - matched)
    # a: 100 uncached, arrived at 0;  b: 10 uncached, arrived at 50;  c: 40 long, 30 cached (10 uncached), at 90
    items, matches, lengths, born = ["a", "b", "c"], [0, 0, 30], [100, 10, 40], [0, 50, 90]
    at = {t: order_waiting(items, matches, HRRN, lengths=lengths, born_tokens=born, processed_tokens=t)
          for t in (52, 100)}
    assert at[52] == ["a", "b", "c"]  # a 0.52, b 0.2, c 0
    assert at[100] == ["b", "a", "c"]  # b 5.0; a and c tie at 1.0: the older first
    assert hrrn_ratio(50, 10, 0) == 5.0 and hrrn_ratio(0, 40, 30) == 0.0
    # no uncached work: drained first ("No prefill work; drain immediately")
    assert order_waiting(["a", "z"], [0, 40], HRRN, lengths=[100, 40], born_tokens=[0, 99],
                         processed_tokens=100)[0] == "z"


def test_hrrn_queue_with_a_real_cache_and_clock() -> None:
    q: KLPMQueue[str] = KLPMQueue(HRRN, oracle=cached(HOT))
    q.push("a", 0, tokens=list(range(500, 600)))  # 100 uncached, born 0
    q.begin_pass(50)
    q.push("b", 1, tokens=[*HOT[:30], *range(700, 710)])  # 30 cached, 10 uncached, born at 50
    q.begin_pass(52)
    assert q.peek() == "a"  # 0.52 vs 0.2
    q.begin_pass(100)
    assert q.peek() == "b"  # 1.0 vs 5.0: the clock moved the order


def test_spf_picks_the_shortest_uncached_prefill() -> None:
    cache = cached(HOT)
    q: KLPMQueue[str] = KLPMQueue(SPF, oracle=cache)
    q.push("long-cold", 0, tokens=list(range(1000, 1020)))  # work 20
    q.push("long-hot", 1, tokens=[*HOT[:90], *range(2000, 2010)])  # 100 long, work 10
    q.push("short-cold", 2, tokens=list(range(3000, 3015)))  # work 15
    q.push("tie", 3, tokens=list(range(4000, 4010)))  # work 10: ties with long-hot, which is older
    assert [q.pop() for _ in range(4)] == ["long-hot", "tie", "short-cold", "long-cold"]
    assert spf_work(100, 100) == 1  # SGLang's max(1, ...)


def test_lpm_aging_lets_a_starving_request_overtake_after_enough_passes() -> None:
    def run(order: QueueOrder) -> int | None:
        """A cold request waits while a hot one (100 cached tokens) arrives every pass; the pass it is picked."""
        q: KLPMQueue[str] = KLPMQueue(order, oracle=cached(HOT))
        q.push("cold", 0, tokens=list(range(5000, 5050)))
        for p in range(8):
            q.push(f"hot{p}", p + 1, tokens=[*HOT, 9000 + p])
            q.begin_pass()
            if q.pop() == "cold":
                return p + 1  # passes waited when picked
        return None

    # each pass the contender is a hot request that has waited 1 pass; the cold one (match 0) waits w passes and
    # wins once N * (w - 1) reaches the 100-token match gap (a tie goes to the older request: the cold one)
    assert run(QueueOrder(None)) is None  # LPM: starves
    assert run(QueueOrder(None, "lpm", 64)) == 3  # 64 * 2 = 128 > 100; 64 * 1 < 100
    assert run(QueueOrder(None, "lpm", 20)) == 6  # 20 * 5 = 100: the tie goes to the cold one
    assert aging_priority(100, 64, 2) == 228


@pytest.mark.parametrize("waiting", [128, 129])
def test_sglang_lpm_orders_fcfs_above_128_waiting_while_lpm_does_not(waiting: int) -> None:
    cache = cached(HOT)
    prompts = [list(range(10_000 + 100 * i, 10_000 + 100 * i + 40)) for i in range(waiting - 1)] + [[*HOT, 7]]
    own: SGLangPassQueue[int] = SGLangPassQueue(parse_policy("sglang:lpm"), oracle=cache)  # type: ignore[arg-type]
    ours: KLPMQueue[int] = KLPMQueue(queue_order(LPMSpec()), oracle=cache)
    for i, p in enumerate(prompts):
        own.push(i, i, tokens=p)
        ours.push(i, i, tokens=p)
    own.begin_pass()
    hot = waiting - 1
    assert ours.pop() == hot  # our lpm at any length
    assert own.pop() == (0 if waiting > 128 else hot)  # SGLang's: FCFS (the list) above 128


def test_sglang_hrrn_falls_back_above_128_and_sglang_spf_does_not() -> None:
    held = [False] * 3
    args = ([0, 0, 0], [100, 10, 50], held, [100, 100, 0])  # ratios 1.0, 10, 0 ; work 100, 10, 50
    assert sglang_pass_order("hrrn", *args) == [1, 0, 2]
    assert sglang_pass_order("spf", *args) == [1, 2, 0]
    assert sglang_pass_order(None, *args) == [0, 1, 2]  # sglang:fcfs never sorts
    many = 129
    args_many = ([0] * many, [100] * (many - 1) + [10], [False] * many, [0] * (many - 1) + [100])
    assert sglang_pass_order("hrrn", *args_many)[0] == 0  # above 128: the list as it is
    assert sglang_pass_order("spf", *args_many)[0] == many - 1  # SGLang's spf has no 128 rule
    # deprioritised last, whatever their key
    assert sglang_pass_order("spf", [0, 0], [5, 50], [True, False], [0, 0]) == [1, 0]


def test_ratio_scan_agrees_with_hrrn_ratio() -> None:
    scan = RatioScan()
    rows = [(0, 100, 0, 0), (1, 10, 0, 50), (2, 40, 30, 90), (3, 40, 40, 95)]
    for seq, length, key, born in rows:
        scan.add(seq, length, key, born, seq)
    for t in (0, 52, 100, 1000):
        best = max(rows, key=lambda r: (hrrn_ratio(t - r[3], r[1], r[2]), -r[0]))
        assert scan.items[scan.best(t)] == best[0]
    scan.remove(3)
    assert scan.items[scan.best(100)] == 1


# -- the queue against the definition under a changing cache --------------------------------------------------------
prompts = st.lists(st.integers(0, 3), min_size=1, max_size=10)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("push"), prompts),
        st.tuples(st.just("pop"), st.booleans()),
        st.tuples(st.just("cache"), prompts),
        st.tuples(st.just("evict"), st.integers(1, 20)),
        st.tuples(st.just("pass"), st.integers(0, 30)),  # a scheduling pass; the prefill tokens run since the last
    ),
    min_size=1, max_size=80,
)


def reference(order: QueueOrder, waiting: dict[int, tuple[list[int], int, int]], cache: RadixKVCache, passes: int,
              clock: int) -> int:
    """The definition of each order, straight from its key (ties: the oldest)."""
    def key(seq: int) -> tuple[float, int]:
        tokens, born_pass, born_tokens = waiting[seq]
        m = cache.match_len(tokens)
        if order.rank == "spf":
            return (-spf_work(len(tokens), m), -seq)
        if order.rank == "hrrn":
            return (hrrn_ratio(clock - born_tokens, len(tokens), m), -seq)
        return (aging_priority(m, order.aging_tokens_per_pass, passes - born_pass), -seq)
    return max(waiting, key=key)


class AlwaysIndexed(KLPMQueue[int]):
    INDEX_ABOVE, INDEX_BELOW = -1, -1


@settings(max_examples=200, deadline=None)
@given(actions, st.sampled_from([HRRN, SPF, QueueOrder(None, "lpm", 3), QueueOrder(None, "lpm", 1)]),
       st.sampled_from([KLPMQueue, AlwaysIndexed]))
def test_queue_pops_exactly_what_each_order_defines(steps, order, queue_type) -> None:  # type: ignore[no-untyped-def]
    cache = RadixKVCache(10_000)
    q: KLPMQueue[int] = queue_type(order, oracle=cache)
    cache.add_insert_listener(q.on_cache_insert)
    waiting: dict[int, tuple[list[int], int, int]] = {}
    seq = passes = clock = 0
    for op, arg in steps:
        if op == "push":
            q.push(seq, seq, tokens=arg)
            waiting[seq] = (arg, passes, clock)
            seq += 1
        elif op == "pass":
            passes, clock = passes + 1, clock + arg
            q.begin_pass(clock)
        elif op == "pop" and waiting:
            expected = reference(order, waiting, cache, passes, clock)
            assert q.peek() == expected
            assert q.pop() == expected
            if arg:
                cache.insert(waiting[expected][0])
            del waiting[expected]
        elif op == "cache":
            cache.insert(arg)
        elif op == "evict":
            cache.capacity_tokens = max(1, cache.tree_tokens - arg)
            cache.make_room(0)
            cache.capacity_tokens = 10_000
        assert len(q) == len(waiting)


@pytest.mark.parametrize("label", ["hrrn", "spf", "lpm-aging:7", "lpm", "klpm:3"])
def test_one_call_order_equals_the_queue(label: str) -> None:
    """What the plugin runs (order_waiting on match lengths) pops as the simulator's queue does."""
    cache = cached(HOT, list(range(200, 260)))
    order = queue_order(parse_policy(label))
    q: KLPMQueue[int] = KLPMQueue(order, oracle=cache)
    prompts, born_p, born_t = [], [], []
    for i in range(40):
        base = HOT[: (i * 37) % 100] if i % 3 else list(range(200, 200 + (i * 11) % 60))
        prompts.append([*base, *range(50_000 + 100 * i, 50_000 + 100 * i + (i * 7) % 40 + 1)])
        born_p.append(q.passes)
        born_t.append(q.processed_tokens)
        q.push(i, i, tokens=prompts[-1])
        if i % 5 == 4:
            q.begin_pass(q.processed_tokens + 97 * i)
    got = [q.pop() for _ in range(len(prompts))]
    expected = order_waiting(list(range(40)), [cache.match_len(p) for p in prompts], order,
                             lengths=[len(p) for p in prompts], born_passes=born_p, passes=q.passes,
                             born_tokens=born_t, processed_tokens=q.processed_tokens)
    assert got == expected


# -- specs ---------------------------------------------------------------------------------------------------------
def test_one_spec_one_label_and_clear_errors() -> None:
    for label in ("hrrn", "spf", "lpm-aging:64", "sglang:fcfs", "sglang:lpm", "sglang:hrrn", "sglang:spf"):
        spec = parse_policy(label)
        assert isinstance(spec, KLPMSpec) and policy_label(spec) == label and parse_policy(label) == spec
    assert parse_policy("sglang:shortest-prefill-first") == parse_policy("sglang:spf")
    bad = {"hrrn:2": "takes no argument", "lpm-aging": "needs N", "lpm-aging:0": "1..1000000",
           "lpm-aging:x": "integer", "sglang:dfs-weight": "not modelled", "sglang:nope": "sglang:hrrn"}
    for text, words in bad.items():
        with pytest.raises(ValueError, match=words):
            parse_policy(text)
    for fields in ({"k": 4, "rank": "hrrn"}, {"k": 2, "sglang": True}, {"k": None, "rank": "spf",
                                                                        "aging_tokens_per_pass": 3}):
        with pytest.raises(ValueError):
            KLPMSpec.model_validate(fields)


# -- the simulator under each policy --------------------------------------------------------------------------------
MODEL = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b")).step_model()
POLICIES = ["fcfs", "lpm", "hrrn", "spf", "lpm-aging:64", "sglang:fcfs", "sglang:lpm", "sglang:hrrn", "sglang:spf"]


def test_the_simulator_runs_every_policy_to_completion_and_they_differ() -> None:
    reqs = list(make_requests("gsp:num_groups=64,system_prompt_len=2048", 60.0, "poisson", num_requests=500, seed=3))
    p99 = {}
    for label in POLICIES:
        eng = SimEngine(EngineConfig(), MODEL, 120_000, parse_policy(label))
        eng.add_requests(reqs)
        eng.run()
        assert eng.done() and not eng.aborted
        assert sorted(eng.completed.column("request_id").tolist()) == [r.request_id for r in reqs]
        ttft = sorted(eng.completed.ttft_s().tolist())
        p99[label] = ttft[int(0.99 * (len(ttft) - 1))]
    assert all(math.isfinite(v) for v in p99.values())
    assert len({round(p99[x], 6) for x in ("fcfs", "lpm", "hrrn", "spf", "lpm-aging:64")}) == 5, p99


def test_a_policy_switch_to_and_from_sglangs_pass_keeps_every_request() -> None:
    reqs = list(make_requests("gsp:num_groups=16,system_prompt_len=1024", 40.0, "poisson", num_requests=300, seed=2))
    eng = SimEngine(EngineConfig(), MODEL, 60_000, parse_policy("hrrn"))
    eng.add_requests(reqs)
    for i, label in enumerate(["sglang:lpm", "lpm-aging:16", "sglang:hrrn", "spf", "fcfs"]):
        eng.run(until_s=1.0 + i)
        eng.set_policy(parse_policy(label))
    eng.run()
    assert sorted(eng.completed.column("request_id").tolist()) == [r.request_id for r in reqs]


def test_sglang_lpm_option_runs_hrrn_and_spf_as_sglangs_own() -> None:
    eng = SimEngine(EngineConfig(sglang_lpm=True), MODEL, 60_000, parse_policy("hrrn"))
    assert isinstance(eng._batcher.queue, SGLangPassQueue) and eng._batcher.queue.spec == parse_policy("sglang:hrrn")
    eng.set_policy(parse_policy("lpm-aging:8"))  # not one of SGLang's: the shared queue
    assert isinstance(eng._batcher.queue, KLPMQueue)
