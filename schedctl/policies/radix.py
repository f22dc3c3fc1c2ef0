"""A compressed radix tree over token-id sequences: the one implementation schedctl has of this idea.

Two structures are built on it: the simulator's prefix KV cache (``sim/radix_cache.py``: reference counts,
LRU eviction, a token capacity) and the k-LPM queue's index of waiting prompts (``policies/klpm.py``). Both
subclass :class:`RadixNode` to add their own per-node fields.

Written by hand rather than taken from a library: the available trie packages key on strings or bytes, and we
need edges labelled with token tuples, node splitting at arbitrary token offsets, and subclassable nodes whose
payload (reference counts, waiting requests) the owning structure controls. Edges are Python tuples so a
whole edge is compared with one C-level slice comparison; cost grows with tree depth, not with prompt length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

Tokens = Sequence[int]


class RadixNode:
    __slots__ = ("children", "depth", "key", "parent")

    def __init__(self, key: tuple[int, ...], parent: RadixNode | None, depth: int) -> None:
        self.key = key  # the edge label from the parent to this node
        self.parent = parent
        self.depth = depth  # tokens from the root to the end of this node's edge
        self.children: dict[int, RadixNode] = {}


N = TypeVar("N", bound=RadixNode)


def common_prefix_len(tokens: Tokens, start: int, key: tuple[int, ...]) -> int:
    """Length of the common prefix of ``tokens[start:]`` and ``key``."""
    n = min(len(tokens) - start, len(key))
    if tuple(tokens[start : start + n]) == key[:n]:
        return n
    lo, hi = 0, n  # tokens[start:start+lo] == key[:lo]; the first mismatch lies in [lo, hi)
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if tuple(tokens[start + lo : start + mid]) == key[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and tokens[start + lo] == key[lo]:
        lo += 1
    return lo


class RadixTree(Generic[N]):
    """The tree structure only: match, insert (splitting edges), remove a leaf. Owners add the payload."""

    def __init__(self, node_type: type[N]) -> None:
        self.node_type = node_type
        self.root: N = node_type((), None, 0)
        self.num_nodes = 1

    def match(self, tokens: Tokens) -> tuple[N, N | None, int]:
        """Walk ``tokens`` down the tree.

        Returns ``(node, child, offset)``: ``node`` is the deepest node whose whole edge matched; when the match
        continues ``offset`` tokens into one of its children's edges, that child is ``child`` (else None, 0).
        The matched length is ``node.depth + offset``.
        """
        node = self.root
        pos = 0
        n = len(tokens)
        while pos < n:
            child = node.children.get(tokens[pos])
            if child is None:
                return node, None, 0
            key = child.key
            end = pos + len(key)
            if end <= n and tuple(tokens[pos:end]) == key:
                node = child  # type: ignore[assignment]
                pos = end
                continue
            return node, child, common_prefix_len(tokens, pos, key)  # type: ignore[return-value]
        return node, None, 0

    def match_len(self, tokens: Tokens) -> int:
        node, _child, offset = self.match(tokens)
        return node.depth + offset

    def split(self, child: N, offset: int) -> N:
        """Split ``child``'s edge after ``offset`` tokens; returns the new middle node (it ends at the split)."""
        assert 0 < offset < len(child.key)
        parent = child.parent
        assert parent is not None
        mid = self.node_type(child.key[:offset], parent, parent.depth + offset)
        parent.children[child.key[0]] = mid
        child.key = child.key[offset:]
        child.parent = mid
        mid.children[child.key[0]] = child
        self.num_nodes += 1
        self._on_split(mid, child)
        return mid

    def _on_split(self, mid: N, child: N) -> None:
        """Hook for owners whose per-node payload must follow a split (default: nothing)."""

    def insert(self, tokens: Tokens) -> tuple[N, int, list[N]]:
        """Make ``tokens`` a path that ends exactly at a node.

        Returns ``(end_node, matched_before, new_nodes)``: the node where ``tokens`` ends, how many leading
        tokens were already in the tree, and the nodes created for the rest (at most one new leaf, plus a split
        node when the path left or ended inside an existing edge).
        """
        node, child, offset = self.match(tokens)
        matched = node.depth + offset
        new_nodes: list[N] = []
        if child is not None:
            node = self.split(child, offset)
            new_nodes.append(node)
        if matched < len(tokens):
            leaf = self.node_type(tuple(tokens[matched:]), node, len(tokens))
            node.children[leaf.key[0]] = leaf
            self.num_nodes += 1
            new_nodes.append(leaf)
            node = leaf
        return node, matched, new_nodes

    def remove_leaf(self, node: N) -> None:
        assert not node.children and node.parent is not None
        del node.parent.children[node.key[0]]
        node.parent = None
        self.num_nodes -= 1

    def path_tokens(self, node: RadixNode) -> tuple[int, ...]:
        """The full token sequence from the root to the end of ``node``'s edge."""
        parts: list[tuple[int, ...]] = []
        cur: RadixNode | None = node
        while cur is not None:
            parts.append(cur.key)
            cur = cur.parent
        return tuple(t for part in reversed(parts) for t in part)
