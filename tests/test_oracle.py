"""The exact optimum (bench/oracle.py): agreement with brute force, lower bound for policies, known optimal cases."""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schedctl.bench.instances import Query, random_prefix_tree, regular_arrival_shuffled_queue
from schedctl.bench.oracle import (
    CacheKind,
    LateCount,
    MaxTTFT,
    NodeLimitExceeded,
    Objective,
    ServerModel,
    brute_force,
    compare_to_optimum,
    evaluate,
    policy_order,
    policy_value,
    schedule,
    solve,
)
from schedctl.policies.radix import common_prefix_len
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, PolicySpec
from schedctl.tokens import TokenArray

CACHES: tuple[CacheKind, ...] = ("last_prompt", "radix")
POLICIES: tuple[PolicySpec, ...] = (FCFSSpec(), LPMSpec(), *(KLPMSpec(k=k) for k in range(1, 5)))
TOL = 1e-9


def model(cache: CacheKind) -> ServerModel:
    # Costs of a few seconds per query of ~10 tokens, so releases over tens of seconds make a congested queue.
    return ServerModel(per_token_s=1.0, per_token_pair_s=0.02, per_query_s=0.5, cache=cache)


def fcfs_order(queries: list[Query]) -> tuple[int, ...]:
    return tuple(sorted(range(len(queries)), key=lambda j: (queries[j].arrival_s, j)))


def objectives(queries: list[Query], m: ServerModel) -> list[Objective]:
    """Max TTFT, and the late count against FCFS's median TTFT (a bound some orders meet and others miss)."""
    bound_s = statistics.median(schedule(queries, fcfs_order(queries), m).ttft_s)
    return [MaxTTFT(), LateCount(ttft_bound_s=bound_s)]


def small_instances(max_queries: int, count: int, seed: int) -> list[list[Query]]:
    """Random prefix trees and shuffled-queue instances of 1..max_queries queries, at several loads."""
    rng = np.random.default_rng(seed)
    out: list[list[Query]] = []
    for i in range(count):
        s = int(rng.integers(1 << 30))
        if i % 3:
            n = int(rng.integers(1, max_queries + 1))
            span_s = float(rng.choice([0.0, 10.0, 20.0, 40.0, 80.0]))
            out.append(random_prefix_tree(
                n, s, prefix_nodes=int(rng.integers(0, 5)), segment_tokens=(3, 15), arrival_span_s=span_s))
        else:
            groups = int(rng.integers(1, 4))
            per_group = int(rng.integers(1, max_queries // groups + 1))
            out.append(regular_arrival_shuffled_queue(
                groups, per_group, int(rng.integers(2, 15)), int(rng.integers(1, 5)), float(rng.uniform(1, 8)), s))
    return out


# -- the exact solver against brute force ------------------------------------------------------------------------
@pytest.mark.parametrize("cache", CACHES)
def test_branch_and_bound_matches_brute_force(cache: CacheKind) -> None:
    m = model(cache)
    for queries in small_instances(max_queries=7, count=60, seed=1):
        for obj in objectives(queries, m):
            exact = solve(queries, m, obj)
            brute = brute_force(queries, m, obj)
            assert exact.value == pytest.approx(brute.value, abs=TOL), (queries, obj)
            assert evaluate(queries, exact.order, m, obj) == pytest.approx(brute.value, abs=TOL)


@pytest.mark.parametrize("cache", CACHES)
def test_optimum_is_never_worse_than_a_policy(cache: CacheKind) -> None:
    m = model(cache)
    for queries in small_instances(max_queries=10, count=16, seed=2):
        for obj in objectives(queries, m):
            opt = solve(queries, m, obj)
            for policy in POLICIES:
                c = compare_to_optimum(queries, m, obj, policy, optimum=opt)
                assert c.policy_value >= opt.value - TOL, (policy, queries)
                assert c.ratio >= 1 - TOL


# -- cases where the optimum is known --------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", CACHES)
def test_fcfs_is_optimal_for_max_ttft_without_shared_prefixes(cache: CacheKind) -> None:
    m = model(cache)
    for seed in range(25):
        queries = random_prefix_tree(2 + seed % 5, seed, prefix_nodes=0, arrival_span_s=5.0 + 3 * seed)
        best = brute_force(queries, m, MaxTTFT()).value
        assert policy_value(queries, m, MaxTTFT(), FCFSSpec()) == pytest.approx(best, abs=TOL)


@pytest.mark.parametrize("cache", CACHES)
def test_without_shared_prefixes_and_released_together_every_order_ties(cache: CacheKind) -> None:
    m = model(cache)
    rng = np.random.default_rng(3)
    for seed in range(10):
        queries = random_prefix_tree(2 + seed % 7, seed, prefix_nodes=0)
        total_s = sum(m.prefill_s(len(q.tokens), 0) for q in queries)
        for _ in range(5):
            order = tuple(int(j) for j in rng.permutation(len(queries)))
            assert evaluate(queries, order, m, MaxTTFT()) == pytest.approx(total_s, abs=TOL)


@pytest.mark.parametrize("cache", CACHES)
def test_lpm_is_optimal_for_max_ttft_when_everything_is_released_at_once(cache: CacheKind) -> None:
    # Max TTFT is then the makespan; LPM visits the prefix tree depth-first, which maximises reuse.
    m = model(cache)
    for seed in range(15):
        queries = random_prefix_tree(3 + seed % 7, seed, prefix_nodes=2 + seed % 4)
        assert policy_value(queries, m, MaxTTFT(), LPMSpec()) == pytest.approx(solve(queries, m, MaxTTFT()).value)


def test_with_a_radix_cache_and_everything_released_at_once_every_order_ties() -> None:
    # Every token of the prompts' prefix tree is computed exactly once, whatever the order.
    m = model("radix")
    rng = np.random.default_rng(4)
    for seed in range(10):
        queries = random_prefix_tree(2 + seed % 7, seed, prefix_nodes=4)
        values = {round(evaluate(queries, [int(j) for j in rng.permutation(len(queries))], m, MaxTTFT()), 9)
                  for _ in range(6)}
        assert len(values) == 1


def test_deliberate_idling_can_beat_every_work_conserving_order() -> None:
    # A (10 shared + 1 token) at 0 runs alone until 11. R (1 unrelated token) arrives at 10.9, B (same 10 shared
    # + 1 token) at 11.5. Work-conserving: R at 11, evicting A's prompt, B cold: 12 -> 23, TTFT 11.5. Waiting for
    # B keeps the prefix: B 11.5 -> 12.5, R 12.5 -> 13.5 (TTFT 2.6), so the max TTFT is A's 11.
    shared = tuple(range(10))
    queries = [Query(0.0, (*shared, 100)), Query(10.9, (200,)), Query(11.5, (*shared, 101))]
    m = ServerModel(per_token_s=1.0, per_token_pair_s=0.0, per_query_s=0.0, cache="last_prompt")
    opt = solve(queries, m, MaxTTFT())
    assert opt.value == pytest.approx(11.0)
    assert opt.order == (0, 2, 1) and not schedule(queries, opt.order, m).work_conserving
    assert brute_force(queries, m, MaxTTFT(), work_conserving=True).value == pytest.approx(11.5)
    # A cache that keeps A's prompt takes the idling advantage away.
    radix = m.model_copy(update={"cache": "radix"})
    assert brute_force(queries, radix, MaxTTFT(), work_conserving=True).value == pytest.approx(opt.value)


def test_with_a_radix_cache_some_work_conserving_order_minimises_max_ttft() -> None:
    # Exchange argument (oracle.py's docstring): start the oldest waiting query in any idle gap instead.
    m = model("radix")
    for queries in small_instances(max_queries=6, count=40, seed=5):
        assert brute_force(queries, m, MaxTTFT(), work_conserving=True).value == pytest.approx(
            brute_force(queries, m, MaxTTFT()).value, abs=TOL)


# -- policies run online under the model --------------------------------------------------------------------------
def naive_klpm_order(queries: list[Query], m: ServerModel, k: int | None) -> list[int]:
    """k-LPM by rescanning every waiting query's match at every pick (no KLPMQueue, no radix tree)."""
    processed: list[TokenArray] = []

    def match(tokens: TokenArray) -> int:
        cached = processed[-1:] if m.cache == "last_prompt" else processed
        return max((common_prefix_len(tokens, 0, p) for p in cached), default=0)

    age = fcfs_order(queries)
    waiting: list[int] = []
    t, order = float("-inf"), list[int]()
    while len(order) < len(queries):
        if not waiting:
            t = max(t, min(queries[j].arrival_s for j in age if j not in order))
        waiting = [j for j in age if j not in order and queries[j].arrival_s <= t]
        if k is not None and len(order) % k == 0:
            j = waiting[0]
        else:
            j = max(waiting, key=lambda x: (match(queries[x].tokens), -age.index(x)))
        t += m.prefill_s(len(queries[j].tokens), match(queries[j].tokens))
        processed.append(queries[j].tokens)
        order.append(j)
        waiting.remove(j)
    return order


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("k", [1, 2, 3, 4, None])
def test_policy_order_matches_a_naive_rescan(cache: CacheKind, k: int | None) -> None:
    m = model(cache)
    for queries in small_instances(max_queries=14, count=25, seed=6):
        order = policy_order(queries, m, k)
        assert list(order) == naive_klpm_order(queries, m, k)
        assert schedule(queries, order, m).work_conserving


def test_fcfs_serves_in_release_order() -> None:
    m = model("radix")
    for queries in small_instances(max_queries=10, count=10, seed=7):
        assert policy_order(queries, m, 1) == fcfs_order(queries)


# -- solver mechanics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", CACHES)
def test_twelve_queries_solve_within_a_node_budget(cache: CacheKind) -> None:
    m = model(cache)
    instances = [
        regular_arrival_shuffled_queue(3, 4, 12, 2, 3.0, seed=8),
        random_prefix_tree(12, 9, prefix_nodes=4, arrival_span_s=40.0),
        random_prefix_tree(12, 9, prefix_nodes=4, segment_tokens=(3, 15), arrival_span_s=5.0),  # all but at once
    ]
    for queries in instances:
        for obj in objectives(queries, m):
            opt = solve(queries, m, obj, node_limit=200_000)  # raises NodeLimitExceeded past the budget
            for policy in POLICIES:
                assert policy_value(queries, m, obj, policy) >= opt.value - TOL


def test_node_limit_stops_the_search_with_the_best_order_so_far() -> None:
    m = model("last_prompt")
    queries = random_prefix_tree(9, 10, prefix_nodes=4, arrival_span_s=30.0)
    opt = solve(queries, m, MaxTTFT())
    assert opt.nodes_expanded > 1
    with pytest.raises(NodeLimitExceeded) as info:
        solve(queries, m, MaxTTFT(), node_limit=opt.nodes_expanded - 1)
    incumbent = info.value.incumbent
    assert incumbent.value >= opt.value - TOL
    assert evaluate(queries, incumbent.order, m, MaxTTFT()) == pytest.approx(incumbent.value)


def test_ratio_of_the_optimal_order_is_one_and_zero_over_zero_is_one() -> None:
    m = model("last_prompt")
    queries = random_prefix_tree(6, 11, prefix_nodes=3, arrival_span_s=20.0)
    opt = solve(queries, m, MaxTTFT())
    assert evaluate(queries, opt.order, m, MaxTTFT()) / opt.value == pytest.approx(1.0)
    loose = LateCount(ttft_bound_s=1e9)
    assert compare_to_optimum(queries, m, loose, FCFSSpec()).ratio == 1.0


# -- the model and the generators -----------------------------------------------------------------------------------
@given(p=st.integers(1, 400), c=st.integers(0, 400), a=st.floats(0, 2), b=st.floats(0, 0.1), k=st.floats(0, 3))
def test_prefill_cost_is_linear_plus_attention_over_the_new_tokens(
    p: int, c: int, a: float, b: float, k: float
) -> None:
    c = min(c, p)
    m = ServerModel(per_token_s=a, per_token_pair_s=b, per_query_s=k)
    per_position = sum(a + b * (i + 0.5) for i in range(c, p))  # token i attends to i earlier tokens and itself/2
    assert m.prefill_s(p, c) == pytest.approx(per_position + k, rel=1e-9, abs=1e-9)
    assert m.prefill_s(p, max(c - 1, 0)) >= m.prefill_s(p, c)


def test_semi_active_timing() -> None:
    m = model("radix")
    for queries in small_instances(max_queries=8, count=10, seed=12):
        order = [int(j) for j in np.random.default_rng(0).permutation(len(queries))]
        s = schedule(queries, order, m)
        prev_s = float("-inf")
        for j in order:
            assert s.start_s[j] == max(prev_s, queries[j].arrival_s)
            assert s.completion_s[j] == pytest.approx(s.start_s[j] + m.prefill_s(len(queries[j].tokens),
                                                                                 s.cached_tokens[j]))
            prev_s = s.completion_s[j]


def test_shuffled_queue_structure() -> None:
    queries = regular_arrival_shuffled_queue(3, 4, 7, 3, 0.5, seed=13)
    assert queries == regular_arrival_shuffled_queue(3, 4, 7, 3, 0.5, seed=13)
    assert queries != regular_arrival_shuffled_queue(3, 4, 7, 3, 0.5, seed=14)
    assert [q.arrival_s for q in queries] == [0.5 * i for i in range(12)]
    groups: dict[tuple[int, ...], list[Query]] = {}
    for q in queries:
        assert len(q.tokens) == 10
        groups.setdefault(tuple(q.tokens[:7]), []).append(q)
    assert sorted(len(g) for g in groups.values()) == [4, 4, 4]
    for a, b in itertools.combinations(queries, 2):
        assert common_prefix_len(a.tokens, 0, b.tokens) == (7 if a.tokens[:7] == b.tokens[:7] else 0)
    uniques = [t for q in queries for t in q.tokens[7:]]
    assert len(set(uniques)) == len(uniques)


def test_random_prefix_tree_structure() -> None:
    queries = random_prefix_tree(20, 15, prefix_nodes=0, arrival_span_s=10.0)
    assert queries == random_prefix_tree(20, 15, prefix_nodes=0, arrival_span_s=10.0)
    arrivals = [q.arrival_s for q in queries]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0 and arrivals[-1] <= 10.0
    for a, b in itertools.combinations(queries, 2):
        assert common_prefix_len(a.tokens, 0, b.tokens) == 0
    shared = random_prefix_tree(20, 15, prefix_nodes=3)
    assert all(q.arrival_s == 0.0 for q in shared)
    assert any(common_prefix_len(a.tokens, 0, b.tokens) > 0 for a, b in itertools.combinations(shared, 2))
