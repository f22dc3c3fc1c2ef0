"""The prefix KV cache under random operations: matches, capacity, locks, LRU, accounting."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.policies.radix import RadixTree
from schedctl.sim.radix_cache import KVNode, RadixKVCache

# Small alphabets and lengths make shared prefixes, splits and partial matches frequent.
seqs = st.lists(st.integers(0, 3), min_size=1, max_size=12)


def lcp(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tree_tokens(cache: RadixKVCache) -> int:
    total, stack = 0, list(cache.tree.root.children.values())
    while stack:
        node = stack.pop()
        total += len(node.key)
        stack.extend(node.children.values())
    return total


def unlocked_tokens(cache: RadixKVCache) -> int:
    total, stack = 0, list(cache.tree.root.children.values())
    while stack:
        node = stack.pop()
        total += len(node.key) if node.lock_ref == 0 else 0
        stack.extend(node.children.values())
    return total


@settings(max_examples=200, deadline=None)
@given(st.lists(seqs, min_size=1, max_size=30), st.lists(seqs, min_size=1, max_size=10))
def test_tree_match_is_longest_common_prefix_with_any_inserted(inserted: list[list[int]], queries: list[list[int]]):
    tree: RadixTree[KVNode] = RadixTree(KVNode)
    for s in inserted:
        tree.insert(s)
    for q in queries + inserted:
        assert tree.match_len(q) == max(lcp(q, s) for s in inserted)
    for s in inserted:  # a match after insert is found, whole
        node, _child, offset = tree.match(s)
        assert node.depth + offset == len(s)
        assert list(tree.path_tokens(node)) == s[: node.depth]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), seqs),  # lock the cached prefix, make room, extend, keep the lock
        st.tuples(st.just("release"), st.integers(0, 50)),  # finish one held request: insert + unlock
        st.tuples(st.just("alloc"), st.integers(1, 6)),  # in-flight decode tokens
    ),
    min_size=1, max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(8, 40))
def test_cache_invariants_under_random_operations(operations, capacity: int):
    cache = RadixKVCache(capacity)
    held: list[tuple[KVNode, list[int]]] = []
    for op, arg in operations:
        if op == "admit":
            node, cached = cache.lock_prefix(arg, len(arg))
            assert cached == cache.tree.match_len(arg[:cached])
            need = len(arg) - cached
            if not cache.make_room(need):
                cache.unlock(node)
                continue
            leaf = cache.extend_locked(node, arg, len(arg))
            held.append((leaf, arg))
            assert cache.match_len(arg) == len(arg)  # a match after insert is found
        elif op == "release" and held:
            leaf, seq = held.pop(arg % len(held))
            cache.insert(seq, start=leaf)
            cache.unlock(leaf)
        elif op == "alloc" and cache.make_room(arg):
            cache.inflight_tokens += arg
        # capacity never exceeded; the counters agree with the tree
        assert cache.used_tokens <= cache.capacity_tokens
        assert cache.tree_tokens == tree_tokens(cache)
        assert cache.evictable_tokens == unlocked_tokens(cache)
        # a referenced node is never evicted: every held request's sequence is still cached, whole
        for leaf, seq in held:
            assert leaf.parent is not None
            assert cache.match_len(seq) == len(seq)


def test_lru_evicts_least_recently_used_leaf_first():
    cache = RadixKVCache(12)
    for seq in ([1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]):
        node, _ = cache.lock_prefix(seq, len(seq))
        cache.make_room(4)
        leaf = cache.extend_locked(node, seq, 4)
        cache.unlock(leaf)
    node, cached = cache.lock_prefix([1, 1, 1, 1], 4)  # touch [1,...] again: [2,...] is now the oldest
    assert cached == 4
    cache.unlock(node)
    assert cache.make_room(4)
    assert cache.match_len([2, 2, 2, 2]) == 0
    assert cache.match_len([1, 1, 1, 1]) == 4 and cache.match_len([3, 3, 3, 3]) == 4
    assert cache.evicted_tokens == 4


def test_make_room_refuses_when_locked_tokens_block_it():
    cache = RadixKVCache(10)
    node, _ = cache.lock_prefix([5] * 8, 8)
    cache.make_room(8)
    cache.extend_locked(node, [5] * 8, 8)
    assert cache.available_tokens == 2
    assert not cache.make_room(3)
    assert cache.match_len([5] * 8) == 8


def test_insert_listener_hears_new_paths_only():
    cache = RadixKVCache(100)
    heard: list[tuple[list[int], int, int]] = []
    cache.add_insert_listener(lambda t, a, b: heard.append((list(t), a, b)))
    cache.insert([1, 2, 3, 4])
    cache.insert([1, 2, 3, 4])  # nothing new
    cache.insert([1, 2, 9])
    assert heard == [([1, 2, 3, 4], 0, 4), ([1, 2, 9], 2, 3)]


def test_hit_rate_counts_admitted_lookups():
    cache = RadixKVCache(100)
    cache.record_lookup(100, 25)
    cache.record_lookup(100, 75)
    assert cache.hit_rate == pytest.approx(0.5)


def test_tokens_of_any_sequence_type_match_the_same():
    cache = RadixKVCache(100)
    cache.insert((1, 2, 3, 4))
    assert cache.match_len([1, 2, 3, 7]) == 3
    assert cache.match_len(array("q", [1, 2, 3, 4, 5])) == 4
