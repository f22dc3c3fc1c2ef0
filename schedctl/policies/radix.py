"""A compressed radix tree over token-id sequences: the one implementation schedctl has of this idea.

Two structures are built on it: the simulator's prefix KV cache (``sim/radix_cache.py``: reference counts,
LRU eviction, a token capacity) and the k-LPM queue's index of waiting prompts (``policies/klpm.py``). Both
subclass :class:`RadixNode` to add their own per-node fields.

Written by hand rather than taken from a library: the available trie packages key on strings or bytes, and we
need edges labelled with token sequences, node splitting at arbitrary token offsets, and subclassable nodes whose
payload (reference counts, waiting requests) the owning structure controls. A whole edge is compared with one
C-level slice comparison, so cost grows with tree depth, not with prompt length.

Token sequences are ``array('q')`` (see ``schedctl/tokens.py``). Every entry point normalises its input with
``as_tokens``, so callers may pass any sequence of ints (a list, a tuple), paying one conversion.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Generic, TypeVar

from schedctl.tokens import TokenArray, as_tokens

Tokens = Sequence[int]


class RadixNode:
    __slots__ = ("children", "depth", "key", "parent")

    def __init__(self, key: TokenArray, parent: RadixNode | None, depth: int) -> None:
        self.key = key  # the edge label from the parent to this node
        self.parent = parent
        self.depth = depth  # tokens from the root to the end of this node's edge
        self.children: dict[int, RadixNode] = {}


N = TypeVar("N", bound=RadixNode)


def common_prefix_len(tokens: Tokens, start: int, key: Tokens) -> int:
    """Length of the common prefix of ``tokens[start:]`` and ``key``.

    Both are normalised to int64 arrays first: an array never equals a tuple, so comparing mixed types would
    silently find no match.
    """
    tokens, key = as_tokens(tokens), as_tokens(key)
    n = min(len(tokens) - start, len(key))
    if tokens[start : start + n] == key[:n]:
        return n
    lo, hi = 0, n  # tokens[start:start+lo] == key[:lo]; the first mismatch lies in [lo, hi)
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if tokens[start + lo : start + mid] == key[lo:mid]:
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
        self.root: N = node_type(array("q"), None, 0)
        self.num_nodes = 1

    def match(self, tokens: Tokens, start: N | None = None) -> tuple[N, N | None, int]:
        """Walk ``tokens`` down the tree (from ``start``, whose path the caller knows ``tokens`` begins with).

        Returns ``(node, child, offset)``: ``node`` is the deepest node whose whole edge matched; when the match
        continues ``offset`` tokens into one of its children's edges, that child is ``child`` (else None, 0).
        The matched length is ``node.depth + offset``.
        """
        tokens = as_tokens(tokens)
        node = self.root if start is None else start
        pos = node.depth
        n = len(tokens)
        while pos < n:
            child = node.children.get(tokens[pos])
            if child is None:
                return node, None, 0
            key = child.key
            end = pos + len(key)
            if end <= n and tokens[pos:end] == key:
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

    def insert(self, tokens: Tokens, start: N | None = None) -> tuple[N, int, list[N]]:
        """Make ``tokens`` a path that ends exactly at a node (matching from ``start``, as in :meth:`match`).

        Returns ``(end_node, matched_before, new_nodes)``: the node where ``tokens`` ends, how many leading
        tokens were already in the tree, and the nodes created for the rest (at most one new leaf, plus a split
        node when the path left or ended inside an existing edge).
        """
        tokens = as_tokens(tokens)
        node, child, offset = self.match(tokens, start)
        matched = node.depth + offset
        new_nodes: list[N] = []
        if child is not None:
            node = self.split(child, offset)
            new_nodes.append(node)
        if matched < len(tokens):
            leaf = self.node_type(tokens[matched:], node, len(tokens))
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

    def path_tokens(self, node: RadixNode) -> TokenArray:
        """The full token sequence from the root to the end of ``node``'s edge."""
        parts: list[TokenArray] = []
        cur: RadixNode | None = node
        while cur is not None:
            parts.append(cur.key)
            cur = cur.parent
        out = array("q")
        for part in reversed(parts):
            out.extend(part)
        return out
