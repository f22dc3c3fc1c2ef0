"""The k-LPM queue against the straightforward definition, under a changing cache."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, parse_policy, policy_label, queue_k
from schedctl.policies.waiting import klpm_order
from schedctl.sim.radix_cache import RadixKVCache


def reference_pick(waiting: dict[int, list[int]], cache: RadixKVCache, k: int | None, picks: int) -> int:
    """The definition: the oldest on every k-th pick, else the longest cached prefix (ties: oldest)."""
    if k is not None and picks % k == 0:
        return min(waiting)
    return min(waiting, key=lambda seq: (-cache.match_len(waiting[seq]), seq))


prompts = st.lists(st.integers(0, 3), min_size=1, max_size=10)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("push"), prompts),
        st.tuples(st.just("pop"), st.booleans()),  # pop; True: insert the popped prompt into the cache
        st.tuples(st.just("cache"), prompts),  # a cache insert from elsewhere (another request finishing)
        st.tuples(st.just("evict"), st.integers(1, 20)),
    ),
    min_size=1, max_size=80,
)


class AlwaysIndexed(KLPMQueue[int]):
    INDEX_ABOVE, INDEX_BELOW = -1, -1


class NeverIndexed(KLPMQueue[int]):
    INDEX_ABOVE, INDEX_BELOW = 10**9, 10**9


class FlappingIndex(KLPMQueue[int]):  # builds and drops its index often, as the default does on a busy engine
    INDEX_ABOVE, INDEX_BELOW = 3, 2


@settings(max_examples=300, deadline=None)
@given(actions, st.sampled_from([1, 2, 3, 5, None]),
       st.sampled_from([KLPMQueue, AlwaysIndexed, NeverIndexed, FlappingIndex]))
def test_queue_pops_exactly_what_the_definition_picks(steps, k, queue_type):
    cache = RadixKVCache(10_000)
    q: KLPMQueue[int] = queue_type(k, oracle=cache)
    cache.add_insert_listener(q.on_cache_insert)
    waiting: dict[int, list[int]] = {}
    seq = 0
    for op, arg in steps:
        if op == "push":
            q.push(seq, seq, tokens=arg)
            waiting[seq] = arg
            seq += 1
        elif op == "pop" and waiting:
            expected = reference_pick(waiting, cache, k, q.picks)
            assert q.peek() == expected
            got = q.pop()
            assert got == expected
            if arg:
                cache.insert(waiting[got])
            del waiting[got]
        elif op == "cache":
            cache.insert(arg)
        elif op == "evict":
            cache.capacity_tokens = max(1, cache.tree_tokens - arg)
            cache.make_room(0)
            cache.capacity_tokens = 10_000
        assert len(q) == len(waiting)


def test_k1_is_fcfs_and_kinf_is_lpm_and_k3_takes_the_oldest_every_third_pick():
    items = list("abcdefghij")
    matches = [0, 5, 1, 5, 3, 0, 9, 2, 9, 4]
    assert klpm_order(items, matches, 1) == items
    lpm = sorted(items, key=lambda x: (-matches[items.index(x)], items.index(x)))
    assert klpm_order(items, matches, None) == lpm
    order = klpm_order(items, matches, 3)
    remaining = list(items)
    for i, x in enumerate(order):
        if i % 3 == 0:
            assert x == remaining[0], f"pick {i} should be the oldest"
        else:
            assert x == max(remaining, key=lambda y: (matches[items.index(y)], -items.index(y)))
        remaining.remove(x)


def test_pick_counter_carries_across_calls():
    # a caller admitting part of an order per pass keeps the cycle: picks=1 starts with an LPM pick
    assert klpm_order(["old", "new"], [0, 7], 2, picks=1) == ["new", "old"]
    assert klpm_order(["old", "new"], [0, 7], 2, picks=0) == ["old", "new"]


def test_set_k_at_run_time_keeps_the_waiting_requests():
    cache = RadixKVCache(1000)
    cache.insert([9, 9, 9])
    q: KLPMQueue[str] = KLPMQueue(1, oracle=cache)
    cache.add_insert_listener(q.on_cache_insert)
    q.push("cold", 0, tokens=[1, 2])
    q.push("warm", 1, tokens=[9, 9, 9, 4])
    q.set_k(None)
    assert q.pop() == "warm"
    q.set_k(1)
    assert q.pop() == "cold"


def test_insert_raises_keys_of_waiting_requests_sharing_the_new_path():
    cache = RadixKVCache(1000)
    q: KLPMQueue[str] = KLPMQueue(None, oracle=cache)
    cache.add_insert_listener(q.on_cache_insert)
    q.push("a", 0, tokens=[1, 1, 1, 1])
    q.push("b", 1, tokens=[2, 2, 2, 2, 2])
    cache.insert([2, 2, 2, 7])  # b now shares 3 tokens, a none
    assert q.peek() == "b"


def test_policy_specs_parse_label_and_map_to_k():
    for text, spec, k in (("fcfs", FCFSSpec(), 1), ("lpm", LPMSpec(), None), ("klpm:3", KLPMSpec(k=3), 3),
                          ("klpm:inf", KLPMSpec(k="inf"), None)):
        assert parse_policy(text) == spec
        assert parse_policy(policy_label(spec)) == spec
        assert queue_k(spec) == k


def test_common_prefix_len_is_right_for_mixed_sequence_types():
    from array import array

    from schedctl.policies.radix import common_prefix_len

    a, t = array("q", range(40)), tuple(range(40))
    assert common_prefix_len(a, 0, t) == 40
    assert common_prefix_len([*range(10), 7], 0, a) == 10


def test_pop_takes_what_peek_offered_even_after_admitting_it_raised_its_key():
    # The engine peeks, admits (inserting the prompt, which raises the peeked entry's own key to a tie with an
    # older identical prompt), then pops: it must get the request it admitted.
    cache = RadixKVCache(1000)
    cache.insert([5, 5])
    q: KLPMQueue[str] = KLPMQueue(None, oracle=cache)
    cache.add_insert_listener(q.on_cache_insert)
    q.push("older-same-prompt", 0, tokens=[1, 2, 3])
    q.push("newer-longer-match", 1, tokens=[5, 5, 9])
    assert q.peek() == "newer-longer-match"
    cache.insert([5, 5, 9])  # admission of the peeked request
    cache.insert([1, 2, 3])  # and another insert that makes the older one tie (both fully cached)
    assert q.pop() == "newer-longer-match"
    assert q.pop() == "older-same-prompt"


def test_keys_stay_right_across_building_and_dropping_the_index():
    cache = RadixKVCache(1000)
    q: KLPMQueue[int] = KLPMQueue(None, oracle=cache)
    cache.add_insert_listener(q.on_cache_insert)
    q.push(0, 0, tokens=[2, 2, 2, 2, 2])  # the oldest, sharing nothing yet
    for i in range(1, KLPMQueue.INDEX_ABOVE + 2):  # enough to build the index from the requests already waiting
        q.push(i, i, tokens=[1, 1, 1, 100 + i])
    cache.insert([1, 1, 1])  # every request but the oldest now shares 3 tokens
    assert q.pop() == 1
    while len(q) >= KLPMQueue.INDEX_BELOW:  # drain below the drop threshold: back to direct comparison
        assert q.pop() != 0
    cache.insert([2, 2, 2, 2, 2])  # now the oldest shares 5 tokens, more than any other waiting request
    assert q.peek() == 0
