"""The k-LPM waiting queue: one implementation, used by the simulator and by the SGLang plugin.

Rule (Dexter et al., 2025): repeat forever — take the oldest waiting request, then k-1 requests each chosen by
longest prefix match (LPM) against the prefix cache. k=1 is FCFS, k=inf (``k=None`` here) is LPM. A counter of
picks decides which rule applies, so the order is a pure function of the pushes, pops and cache contents:
deterministic across tensor-parallel ranks (no clock, no randomness). LPM ties go to the oldest request.

Why hand-written: SGLang re-matches every waiting request against the cache on every scheduling pass and turns
LPM off above 128 waiting because that is too slow. This queue keeps two heaps (oldest first; longest match
first) and an index of the waiting prompts (a radix tree, ``policies/radix.py``) so that:

* a push matches its prompt once;
* when the cache gains a path (:meth:`on_cache_insert`), only the waiting requests that share a prefix with the
  new path beyond what was cached are touched, and their keys are raised;
* evictions are handled lazily: LPM keys are upper bounds of the true match, and a candidate at the top of the
  heap is re-matched before it is returned (if its match shrank, it is pushed back with the true value). Keys
  never under-estimate, so the first candidate whose key is confirmed is the true longest match.

Beside LPM the same queue runs the other queue orderings of ``KLPMSpec`` (``QueueOrder.rank``; keys in
``policies/orders.py``): ``lpm-aging:N`` and ``spf`` on the same heap (their priority, ``match - N * arrival pass``
and ``-max(1, length - match)``, only grows with the match, so upper-bound keys stay upper bounds; ordering by
``match - N * arrival pass`` is ordering by ``match + N * passes waited``, the pass count now being common to all),
``hrrn`` by a vectorised scan (``orders.RatioScan``: its order changes with the clock). The engine calls
:meth:`KLPMQueue.begin_pass` at each scheduling pass with its processed-prefill-token counter (aging and HRRN's
clock).

Without an oracle (``oracle=None``) the queue orders by match lengths given at push time;
``policies/waiting.py`` (``order_waiting``, ``klpm_order``) uses that mode to order a list in one call (the SGLang
plugin passes SGLang's own match lengths).
"""

from __future__ import annotations

import heapq
from typing import Generic, Protocol, TypeVar

from schedctl.policies.orders import QueueOrder, RatioScan, spf_work
from schedctl.policies.radix import RadixNode, RadixTree, Tokens, common_prefix_len
from schedctl.tokens import TokenArray, as_tokens

T = TypeVar("T")


class PrefixOracle(Protocol):
    """Anything that can say how long a prompt's cached prefix is (the simulator's cache, SGLang's tree).

    ``match_len`` receives the prompt as an int64 ``array('q')`` (see ``schedctl/tokens.py``); an oracle that
    keeps tokens in another type must normalise with ``as_tokens`` before comparing.
    """

    def match_len(self, tokens: Tokens) -> int: ...


class _Entry(Generic[T]):
    __slots__ = ("alive", "born_pass", "born_tokens", "item", "key", "length", "node", "seq", "slot", "tokens", "uid")

    def __init__(self, item: T, tokens: TokenArray | None, seq: int, key: int, uid: int) -> None:
        self.uid = uid  # unique per push: heap tiebreak when a request leaves and comes back with its seq
        self.item = item
        self.tokens = tokens
        self.seq = seq  # arrival order: smaller is older; unique per entry
        self.key = key  # LPM key: an upper bound of the current cached-prefix length
        self.alive = True
        self.node: _WaitNode | None = None
        self.length = 0  # tokens its prefill covers (spf, hrrn)
        self.born_pass = 0  # the queue's pass count when it arrived (aging)
        self.born_tokens = 0  # the engine's processed-prefill-token counter when it arrived (hrrn)
        self.slot = -1  # its slot in the hrrn scan


class _WaitNode(RadixNode):
    __slots__ = ("entries",)

    def __init__(self, key: TokenArray, parent: RadixNode | None, depth: int) -> None:
        super().__init__(key, parent, depth)
        self.entries: dict[int, _Entry[object]] = {}  # waiting requests whose prompt ends here, by seq


class KLPMQueue(Generic[T]):
    """Waiting queue ordered by k-LPM (``k`` an int >= 1, or None for k=inf) or by another ``QueueOrder``.

    The index of waiting prompts pays for itself only when many wait: it is built when more than ``INDEX_ABOVE``
    requests wait and dropped when fewer than ``INDEX_BELOW`` do (the gap stops it flapping); without it, a cache
    insert compares the new path with each waiting prompt directly. Both ways raise exactly the same keys.
    """

    INDEX_ABOVE = 8
    INDEX_BELOW = 4

    def __init__(self, k: int | QueueOrder | None, oracle: PrefixOracle | None = None) -> None:
        self._oracle = oracle
        self._entries: dict[int, _Entry[T]] = {}
        self._fifo: list[tuple[int, int, _Entry[T]]] = []  # (seq, uid, entry)
        self._lpm: list[tuple[int, int, int, _Entry[T]]] = []  # (-key, seq, uid, entry)
        self._pushes = 0
        self._index: RadixTree[_WaitNode] | None = None
        self._peeked: _Entry[T] | None = None  # what peek() would return now (cleared by any change)
        self._offered: _Entry[T] | None = None  # what peek() last returned: the request the caller decided on
        self.picks = 0  # pops since the policy was set; decides oldest-vs-LPM
        self.passes = 0  # scheduling passes (begin_pass): aging's clock
        self.processed_tokens = 0  # the engine's prefill tokens run so far: hrrn's clock
        self.k: int | None = 1
        self.order = QueueOrder(1)
        self._scan: RatioScan | None = None  # hrrn's arrays (None for the heap orders)
        self.set_order(k if isinstance(k, QueueOrder) else QueueOrder(k))

    # -- policy --------------------------------------------------------------------------------------------
    def set_k(self, k: int | None) -> None:
        """Change k at run time (rank lpm, no aging). The pick counter restarts: the next pick is the oldest."""
        self.set_order(QueueOrder(k))

    def set_order(self, order: QueueOrder) -> None:
        """Change the order at run time. The pick counter restarts, so the next pick under k-LPM is the oldest."""
        if order.k is not None and order.k < 1:
            raise ValueError(f"k must be >= 1 or None (inf), got {order.k}")
        was_tracking, old = self._tracks_prefixes, self.order
        self.k, self.order = order.k, order
        self.picks = 0
        self._peeked = self._offered = None
        if self._tracks_prefixes and (not was_tracking or (old.rank, old.aging_tokens_per_pass) != (
                order.rank, order.aging_tokens_per_pass)):
            self._rebuild_prefix_tracking()
        elif not self._tracks_prefixes:
            self._lpm = []
            self._index = None
            self._scan = None

    def begin_pass(self, processed_tokens: int | None = None) -> None:
        """A scheduling pass starts (aging counts passes); ``processed_tokens``: the engine's prefill tokens run
        so far (HRRN's clock, SGLang's ``processed_tokens_counter``)."""
        self.passes += 1
        if processed_tokens is not None:
            self.processed_tokens = processed_tokens
        if self.order.rank == "hrrn":
            self._peeked = None  # the clock moved: ratios changed

    def _prio(self, e: _Entry[T]) -> int:
        """Heap priority (higher first) from the entry's key: lpm (aged), or spf. Non-decreasing in the key."""
        if self.order.rank == "spf":
            return -spf_work(e.length, e.key)
        return e.key - self.order.aging_tokens_per_pass * e.born_pass

    def _set_key(self, e: _Entry[T], key: int) -> None:
        e.key = key
        if self._scan is not None:
            self._scan.set_key(e.slot, key)
        else:
            heapq.heappush(self._lpm, (-self._prio(e), e.seq, e.uid, e))
        self._peeked = None

    @property
    def _tracks_prefixes(self) -> bool:
        return self.k != 1

    def _rebuild_prefix_tracking(self) -> None:
        self._index = None
        self._lpm = []
        self._scan = RatioScan() if self.order.rank == "hrrn" else None
        for e in self._entries.values():
            if self._oracle is not None and e.tokens is not None:
                e.key = self._oracle.match_len(e.tokens)
            self._track(e)
        heapq.heapify(self._lpm)
        self._resize_index()

    def _track(self, e: _Entry[T], heap_push: bool = False) -> None:
        """Put an entry in the scan, or the heap (appended for a heapify unless ``heap_push``)."""
        if self._scan is not None:
            e.slot = self._scan.add(e.seq, e.length, e.key, e.born_tokens, e)
        elif heap_push:
            heapq.heappush(self._lpm, (-self._prio(e), e.seq, e.uid, e))
        else:
            self._lpm.append((-self._prio(e), e.seq, e.uid, e))

    def _resize_index(self) -> None:
        """Build the waiting-prompt index when many wait; drop it when few do."""
        n = len(self._entries)
        if self._index is None and n > self.INDEX_ABOVE and self._oracle is not None and self._tracks_prefixes:
            self._index = RadixTree(_WaitNode)
            for e in self._entries.values():
                if e.tokens is not None:
                    self._index_add(e)
        elif self._index is not None and n < self.INDEX_BELOW:
            self._index = None
            for e in self._entries.values():
                e.node = None

    # -- membership ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, seq: object) -> bool:
        return seq in self._entries

    def items(self) -> list[T]:
        """Waiting items, oldest first (O(n log n); for reports and tests, not the hot path)."""
        return [e.item for e in sorted(self._entries.values(), key=lambda e: e.seq)]

    def push(self, item: T, seq: int, tokens: Tokens | None = None, match_len: int | None = None, *,
             length: int | None = None, born_pass: int | None = None, born_tokens: int | None = None) -> None:
        """Add a waiting request. ``seq`` orders by age (smaller = older) and must be unique.

        With an oracle, pass ``tokens`` (the prompt still to prefill); without one, pass ``match_len``.
        ``length`` (default: the tokens' length), ``born_pass`` and ``born_tokens`` (default: the queue's clocks
        now): what spf, lpm-aging and hrrn order by.
        """
        if seq in self._entries:
            raise KeyError(f"seq {seq} is already waiting")
        tracks = self.k != 1
        arr = None
        if self._oracle is None:
            key = match_len or 0
        elif tokens is None:
            raise ValueError("a queue with a prefix oracle needs the prompt tokens")
        else:
            arr = as_tokens(tokens)
            key = self._oracle.match_len(arr) if tracks else 0
        self._pushes += 1
        uid = self._pushes
        e: _Entry[T] = _Entry(item, arr, seq, key, uid)
        e.length = length if length is not None else (len(arr) if arr is not None else 0)
        e.born_pass = born_pass if born_pass is not None else self.passes
        e.born_tokens = born_tokens if born_tokens is not None else self.processed_tokens
        self._entries[seq] = e
        heapq.heappush(self._fifo, (seq, uid, e))
        if tracks:
            self._track(e, heap_push=True)
            if self._index is not None:
                self._index_add(e)
            elif len(self._entries) > self.INDEX_ABOVE:
                self._resize_index()
        self._peeked = None

    def remove(self, seq: int) -> T:
        """Take a request out of the queue (abort); the pick counter does not move."""
        e = self._entries[seq]
        self._drop(e)
        return e.item

    # -- ordering ------------------------------------------------------------------------------------------
    def peek(self) -> T | None:
        """The request the k-LPM rule picks next, without taking it (None when empty)."""
        if self._peeked is None or not self._peeked.alive:
            self._peeked = self._select()
        self._offered = self._peeked
        return None if self._peeked is None else self._peeked.item

    def pop(self) -> T:
        """Take the next request and advance the pick counter.

        After :meth:`peek`, this takes the request peek returned if it is still waiting, even if the queue changed
        in between: an engine peeks, admits that request (which inserts its prompt in the cache and so raises its
        own key, and perhaps ties it with an older identical prompt), then pops — it must get what it admitted.
        """
        e = self._offered if self._offered is not None and self._offered.alive else None
        if e is None:
            if self._peeked is None or not self._peeked.alive:
                self._peeked = self._select()
            e = self._peeked
        if e is None:
            raise IndexError("pop from an empty KLPMQueue")
        self._drop(e)
        self.picks += 1
        return e.item

    def _oldest_turn(self) -> bool:
        return self.k is not None and self.picks % self.k == 0

    def _select(self) -> _Entry[T] | None:
        if len(self._entries) <= 1:  # nothing to compare: no heap work, no re-check against the cache
            return next(iter(self._entries.values()), None)
        if self._oldest_turn():
            fifo = self._fifo
            while not fifo[0][2].alive:
                heapq.heappop(fifo)
            return fifo[0][2]
        if self._scan is not None:
            return self._select_scan(self._scan)
        lpm = self._lpm
        oracle = self._oracle
        while True:
            negprio, _seq, _uid, e = lpm[0]
            if not e.alive or -negprio != self._prio(e):
                heapq.heappop(lpm)  # stale: taken already, or re-keyed by an insert
                continue
            if oracle is not None and e.tokens is not None:
                actual = oracle.match_len(e.tokens)
                if actual < e.key:  # the cache evicted part of its prefix since the key was set
                    e.key = actual
                    heapq.heapreplace(lpm, (-self._prio(e), e.seq, e.uid, e))
                    continue
            return e

    def _select_scan(self, scan: RatioScan) -> _Entry[T]:
        """hrrn: the highest ratio; keys are upper bounds of the match (ratios too), so re-check the winner."""
        while True:
            slot = scan.best(self.processed_tokens)
            e: _Entry[T] = scan.items[slot]  # type: ignore[assignment]
            if self._oracle is not None and e.tokens is not None:
                actual = self._oracle.match_len(e.tokens)
                if actual < e.key:
                    e.key = actual
                    scan.set_key(slot, actual)
                    continue
            return e

    def _drop(self, e: _Entry[T]) -> None:
        e.alive = False
        del self._entries[e.seq]
        if e.node is not None:
            self._index_remove(e)
        if self._scan is not None and e.slot >= 0:
            self._scan.remove(e.slot)
            e.slot = -1
        if self._index is not None and len(self._entries) < self.INDEX_BELOW:
            self._resize_index()
        self._peeked = self._offered = None
        # Taken entries stay in the heaps until they surface; rebuild when they dominate.
        live = len(self._entries)
        if len(self._fifo) > 2 * live + 64:
            self._fifo = [t for t in self._fifo if t[2].alive]
            heapq.heapify(self._fifo)
        if len(self._lpm) > 2 * live + 64:
            self._lpm = [(-self._prio(x), x.seq, x.uid, x) for x in self._entries.values()]
            heapq.heapify(self._lpm)

    # -- cache notifications -------------------------------------------------------------------------------
    def on_cache_insert(self, tokens: Tokens, start: int, end: int) -> None:
        """The cache now holds ``tokens[:end]``; before, it held ``tokens[:start]`` of this path.

        Raises the LPM key of every waiting request that shares more than ``start`` tokens with the new path.
        """
        if end <= start or self._oracle is None or not self._tracks_prefixes:
            return
        tokens = as_tokens(tokens)
        path = tokens if end == len(tokens) else tokens[:end]
        index = self._index
        if index is None:  # few waiting: compare the new path with each of them
            for e in self._entries.values():
                if e.tokens is not None and e.key < end:
                    lcp = common_prefix_len(e.tokens, 0, path)
                    if lcp > e.key:
                        self._set_key(e, lcp)
            return
        node: RadixNode = index.root
        pos = 0
        while True:
            if pos >= end:  # everything below here shares the whole new path
                self._raise_subtree(node, end)
                return
            child = node.children.get(path[pos])
            if pos > start:  # requests branching off the path here share exactly `pos` tokens
                self._raise_entries(node, pos)
                for other in node.children.values():
                    if other is not child:
                        self._raise_subtree(other, pos)
            if child is None:
                return
            stop = pos + len(child.key)
            if stop <= end and path[pos:stop] == child.key:
                node, pos = child, stop
                continue
            shared = pos + common_prefix_len(path, pos, child.key)
            if shared > start:
                self._raise_subtree(child, shared)
            return

    def _raise_entries(self, node: RadixNode, lcp: int) -> None:
        for e in node.entries.values():  # type: ignore[attr-defined]
            if e.key < lcp:
                self._set_key(e, lcp)

    def _raise_subtree(self, node: RadixNode, lcp: int) -> None:
        stack = [node]
        while stack:
            cur = stack.pop()
            self._raise_entries(cur, lcp)
            stack.extend(cur.children.values())

    # -- the waiting-prompt index --------------------------------------------------------------------------
    def _index_add(self, e: _Entry[T]) -> None:
        assert self._index is not None and e.tokens is not None
        node, _matched, _new = self._index.insert(e.tokens)
        node.entries[e.seq] = e  # type: ignore[assignment]
        e.node = node

    def _index_remove(self, e: _Entry[T]) -> None:
        node = e.node
        e.node = None
        if self._index is None or node is None:
            return
        del node.entries[e.seq]
        while node.parent is not None and not node.entries and not node.children:
            parent = node.parent
            self._index.remove_leaf(node)
            node = parent  # type: ignore[assignment]
