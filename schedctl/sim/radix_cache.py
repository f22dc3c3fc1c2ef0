"""The simulator's prefix KV cache: a radix tree of cached token sequences under a KV-token capacity.

Modelled on SGLang's RadixCache: running requests hold a lock on the node where their cached sequence ends
(a lock counts on every node up to the root, and a locked node is never evicted); unlocked leaves are evicted
least recently used first when room is needed. Memory is counted in KV tokens: tokens held by tree nodes plus
"in-flight" tokens the engine allocated outside the tree (the KV of tokens running requests generate, which
joins the tree when the request finishes).

Listeners registered with :meth:`add_insert_listener` hear every insert as ``(tokens, start, end)``: the tree
now holds ``tokens[:end]`` where it held ``tokens[:start]`` before. The k-LPM queue uses this to keep its
prefix-match keys fresh without re-matching the whole waiting queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from schedctl.policies.radix import RadixNode, RadixTree, Tokens
from schedctl.tokens import TokenArray, as_tokens

InsertListener = Callable[[Tokens, int, int], None]


class KVNode(RadixNode):
    __slots__ = ("born_round", "last_access", "lock_ref")

    def __init__(self, key: TokenArray, parent: RadixNode | None, depth: int) -> None:
        super().__init__(key, parent, depth)
        self.lock_ref = 0
        self.last_access = 0
        self.born_round = -1  # the prefill round whose admission inserted these tokens (-1: a finished request)


class _KVTree(RadixTree[KVNode]):
    def __init__(self) -> None:
        super().__init__(KVNode)
        self.version = 0  # bumped by every change of shape; keys the match memo

    def _on_split(self, mid: KVNode, child: KVNode) -> None:
        mid.lock_ref = child.lock_ref  # whatever locks the child's path locks the new middle node too
        mid.last_access = child.last_access
        mid.born_round = child.born_round
        self.version += 1

    def remove_leaf(self, node: KVNode) -> None:
        super().remove_leaf(node)
        self.version += 1


class RadixKVCache:
    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens <= 0:
            raise ValueError(f"capacity_tokens must be positive, got {capacity_tokens}")
        self.capacity_tokens = capacity_tokens
        self.tree = _KVTree()
        self._memo: tuple[TokenArray, int, KVNode, KVNode | None, int] | None = None
        self.tree_tokens = 0  # tokens held by tree nodes
        self.evictable_tokens = 0  # tree tokens in unlocked nodes
        self.inflight_tokens = 0  # tokens allocated outside the tree
        self.hit_tokens = 0  # admitted prompt tokens found cached
        self.lookup_tokens = 0  # admitted prompt tokens looked up
        self.evicted_tokens = 0
        self._clock = 0
        self._lru: list[tuple[int, int, KVNode]] = []  # (last_access, tiebreak, leaf); lazily invalidated
        self._tiebreak = 0
        self._listeners: list[InsertListener] = []
        self.round = 0  # the current prefill round, as the engine counts them (stamps what admission inserts)

    # -- queries -------------------------------------------------------------------------------------------
    @property
    def used_tokens(self) -> int:
        return self.tree_tokens + self.inflight_tokens

    @property
    def free_tokens(self) -> int:
        return self.capacity_tokens - self.used_tokens

    @property
    def available_tokens(self) -> int:
        """Tokens that could be allocated now: free plus evictable."""
        return self.free_tokens + self.evictable_tokens

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0

    def match_len(self, tokens: Tokens) -> int:
        """Length of the longest cached prefix of ``tokens`` (no side effects)."""
        node, _child, offset = self._match(as_tokens(tokens))
        return node.depth + offset

    def _match(self, tokens: TokenArray) -> tuple[KVNode, KVNode | None, int]:
        # The engine often matches one prompt twice in a row (the queue re-checks its pick, then admission
        # locks it); remember the last answer until the tree changes shape.
        memo = self._memo
        if memo is not None and memo[0] is tokens and memo[1] == self.tree.version:
            return memo[2], memo[3], memo[4]
        node, child, offset = self.tree.match(tokens)
        self._memo = (tokens, self.tree.version, node, child, offset)
        return node, child, offset

    def add_insert_listener(self, fn: InsertListener) -> None:
        self._listeners.append(fn)

    def remove_insert_listener(self, fn: InsertListener) -> None:
        self._listeners.remove(fn)

    # -- locking -------------------------------------------------------------------------------------------
    def lock_prefix(self, tokens: Tokens, limit: int) -> tuple[KVNode, int]:
        """Lock the longest cached prefix of ``tokens[:limit]``; returns (node, cached length).

        The node ends exactly at the cached length (an edge is split if the match stops inside it).
        """
        tokens = as_tokens(tokens)
        node, child, offset = self._match(tokens)
        if node.depth + offset > limit:  # never count the whole prompt as cached: its last token is recomputed
            node, child, offset = self.tree.match(tokens[:limit])
        if child is not None:
            node = self.tree.split(child, offset)
        self.lock(node)
        return node, node.depth

    def lock(self, node: KVNode) -> None:
        self._clock += 1
        cur: KVNode | None = node
        while cur is not None and cur.parent is not None:
            if cur.lock_ref == 0:
                self.evictable_tokens -= len(cur.key)
            cur.lock_ref += 1
            cur.last_access = self._clock
            cur = cur.parent  # type: ignore[assignment]

    def unlock(self, node: KVNode) -> None:
        self._clock += 1
        cur: KVNode | None = node
        while cur is not None and cur.parent is not None:
            assert cur.lock_ref > 0, "unlock of an unlocked node"
            cur.lock_ref -= 1
            cur.last_access = self._clock
            if cur.lock_ref == 0:
                self.evictable_tokens += len(cur.key)
                if not cur.children:
                    self._push_lru(cur)
            cur = cur.parent  # type: ignore[assignment]

    def depth_before_round(self, node: KVNode) -> int:
        """How much of the path ending at ``node`` was cached before the current round's admissions."""
        return self.before_round(node).depth

    def before_round(self, node: KVNode) -> KVNode:
        """The deepest node of the path ending at ``node`` that was cached before the current round's admissions."""
        cur = node
        while cur.born_round == self.round and cur.parent is not None:
            cur = cur.parent  # type: ignore[assignment]
        return cur

    def prefix_unlocked(self, tokens: Tokens, limit: int) -> tuple[int, int]:
        """(cached length of ``tokens[:limit]``, how many of those cached tokens are unlocked) — no side effects.

        The second number is what locking that prefix would take out of the evictable tokens.
        """
        tokens = as_tokens(tokens)
        node, child, offset = self._match(tokens)
        if node.depth + offset > limit:
            node, child, offset = self.tree.match(tokens[:limit])
        unlocked = offset if child is not None and child.lock_ref == 0 else 0
        cur: KVNode | None = node
        while cur is not None and cur.parent is not None:
            if cur.lock_ref == 0:
                unlocked += len(cur.key)
            cur = cur.parent  # type: ignore[assignment]
        return node.depth + offset, unlocked

    # -- allocation ----------------------------------------------------------------------------------------
    def extend_locked(self, node: KVNode, tokens: Tokens, end: int) -> KVNode:
        """Insert ``tokens[:end]``, which extends the locked path ending at ``node``; move the lock to the end.

        The caller has made room (``make_room``) for the ``end - node.depth`` new tokens.
        """
        start = node.depth
        if end <= start:
            return node
        tokens = as_tokens(tokens)
        path = tokens if end == len(tokens) else tokens[:end]
        leaf, matched, new_nodes = self.tree.insert(path, start=node)
        for n in new_nodes:
            if n.depth > matched:  # not a split node: those hold tokens that were there before
                n.born_round = self.round
        self.tree.version += 1
        added = end - matched
        self.tree_tokens += added
        self.evictable_tokens += added
        assert self.used_tokens <= self.capacity_tokens, "extend_locked without room"
        self.lock(leaf)
        self.unlock(node)
        if new_nodes:
            for fn in self._listeners:
                fn(path, matched, end)
        return leaf

    def insert(self, tokens: Tokens, start: KVNode | None = None) -> int:
        """Insert an unlocked sequence (a finished request's prompt and output); returns tokens added.

        ``start``: a node on the path of ``tokens`` (the finished request's locked prompt node) to match from.
        """
        tokens = as_tokens(tokens)
        leaf, matched, _new = self.tree.insert(tokens, start=start)
        added = len(tokens) - matched
        if added:
            self.tree.version += 1
            self.tree_tokens += added
            self.evictable_tokens += added
            self._clock += 1
            leaf.last_access = self._clock
            if leaf.lock_ref == 0 and not leaf.children:
                self._push_lru(leaf)
            for fn in self._listeners:
                fn(tokens, matched, len(tokens))
        return added

    def make_room(self, tokens: int) -> bool:
        """Evict unlocked leaves, least recently used first, until ``tokens`` are free; False if impossible."""
        if tokens > self.available_tokens:
            return False
        lru = self._lru
        while self.free_tokens < tokens:
            _stamp, _tb, leaf = heapq.heappop(lru)
            if leaf.parent is None or leaf.children or leaf.lock_ref or leaf.last_access != _stamp:
                continue  # stale entry
            parent: KVNode = leaf.parent  # type: ignore[assignment]
            n = len(leaf.key)
            self.tree.remove_leaf(leaf)
            self.tree_tokens -= n
            self.evictable_tokens -= n
            self.evicted_tokens += n
            if parent.parent is not None and not parent.children and parent.lock_ref == 0:
                self._push_lru(parent)
        return True

    def _push_lru(self, leaf: KVNode) -> None:
        self._tiebreak += 1
        heapq.heappush(self._lru, (leaf.last_access, self._tiebreak, leaf))
        if len(self._lru) > 4 * self.tree.num_nodes + 1024:
            self._lru = [e for e in self._lru if e[2].parent is not None and e[2].last_access == e[0]]
            heapq.heapify(self._lru)

    def record_lookup(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.lookup_tokens += prompt_tokens
        self.hit_tokens += cached_tokens
