"""SGLang 0.5.23's own waiting-queue order, pass by pass: the embedded engine's ``sglang_lpm`` option.

The idealised engine orders its waiting queue with the shared k-LPM queue (``policies/klpm.py``): exact longest
prefix match at any queue length, ties to the oldest. SGLang's own ``lpm`` differs in ways that show in
cache hit rates and tail TTFT, so this queue reproduces it, from ``srt/managers/schedule_policy.py``
(``SchedulePolicy.calc_priority``, called once per prefill pass by ``Scheduler._get_new_batch_prefill_raw`` in
``srt/managers/scheduler.py``):

- The waiting queue is one list that persists across passes: arrivals and retracted requests are appended
  (``Scheduler._add_request_to_queue``), admitted ones leave it.
- ``_determine_active_policy``: when more than ``WAITING_QUEUE_PREFIX_MATCH_MAX`` (128) requests wait, LPM is
  switched off for that pass: the list is not matched and not sorted, so it keeps the order the last sorted pass
  left plus the arrivals since (FCFS among those).
- ``_compute_prefix_matches``: otherwise each waiting request, in list order, is matched against the cache; a
  request whose cached match is at most ``IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD`` (32) tokens is matched
  against a per-pass tree of the waiting prompts seen so far in this pass: if that match is at least
  ``IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD`` (32) it is *temporarily deprioritised*, otherwise its prompt
  is inserted in the tree. So one request per shared cold prefix goes first in a pass; the others wait until
  that prefix is cached.
- ``_sort_by_longest_prefix``: a stable sort of the list by (deprioritised last, then longer match first); ties
  keep the list's order.

``k=1`` (fcfs) is SGLang's FCFS: the list, never sorted. Other k are not SGLang's own orders.

With ``plugin=True`` the queue orders as the schedctl plugin does inside SGLang (``engine_adapter/sglang/
plugin.py``, any k): fcfs by age; otherwise, at most 128 waiting, SGLang's deprioritisation as above, then the
others by k-LPM on their match lengths (``klpm_order``, the pick counter advanced by the requests admitted since
the previous pass) and the deprioritised ones last by age; above 128 waiting, k-LPM over all of them, then the
deprioritisation over the first 128 of that order (the plugin re-matches a budget of them per pass; here every
match is fresh).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from schedctl.policies.inbatch import held_back
from schedctl.policies.klpm import PrefixOracle, klpm_order
from schedctl.policies.radix import Tokens
from schedctl.tokens import as_tokens

T = TypeVar("T")

WAITING_QUEUE_PREFIX_MATCH_MAX = 128  # schedule_policy.py: LPM off above this many waiting


class SGLangPassQueue(Generic[T]):
    """The waiting list of SGLang's scheduler, sorted once per pass by :meth:`begin_pass` (``k`` None: lpm; 1: fcfs).

    Same calls as :class:`schedctl.policies.klpm.KLPMQueue` where the batcher uses them (push, peek, pop,
    set_k, on_cache_insert, len).
    """

    def __init__(self, k: int | None, oracle: PrefixOracle, plugin: bool = False) -> None:
        self._oracle = oracle
        self._items: list[tuple[T, Tokens, int]] = []  # (item, prompt, seq) in SGLang's list order
        self.plugin = plugin
        self.picks = 0  # plugin: requests admitted since the policy was set (the k-LPM pick counter)
        self.k: int | None = None
        self.set_k(k)
        self.passes = 0
        self.sorted_passes = 0  # passes that matched and sorted (at most 128 waiting)
        self.deprioritised = 0  # requests deprioritised, summed over passes

    def set_k(self, k: int | None) -> None:
        if k not in (None, 1) and not self.plugin:
            raise ValueError(f"SGLang's own orders are lpm (k=inf) and fcfs (k=1), not k={k}")
        self.k = k
        self.picks = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, seq: int, tokens: Tokens | None = None) -> None:
        assert tokens is not None, "SGLang's pass matches prompts: push needs the tokens"
        self._items.append((item, as_tokens(tokens), seq))

    def items(self) -> list[T]:
        return [it for it, _t, _s in self._items]

    def begin_pass(self) -> None:
        """Order the list as ``SchedulePolicy.calc_priority`` does at the start of a prefill pass."""
        self.passes += 1
        if self.plugin:
            self._plugin_pass()
            return
        if self.k == 1 or len(self._items) > WAITING_QUEUE_PREFIX_MATCH_MAX:
            return  # FCFS, or LPM switched off above 128 waiting: the list keeps its order
        self.sorted_passes += 1
        keys = [float("inf") if dep else -match for match, dep in self._matches()]
        order = sorted(range(len(self._items)), key=keys.__getitem__)  # stable: ties keep the list's order
        self._items = [self._items[i] for i in order]

    def _matches(self) -> list[tuple[int, bool]]:
        """(cached match, deprioritised) of each waiting request, in list order (``_compute_prefix_matches``)."""
        matches = [self._oracle.match_len(tokens) for _item, tokens, _seq in self._items]
        held = held_back((m, tokens, None) for m, (_i, tokens, _s) in zip(matches, self._items, strict=True))
        self.deprioritised += sum(held)
        return list(zip(matches, held, strict=True))

    def _plugin_pass(self) -> None:
        by_age = sorted(self._items, key=lambda it: it[2])
        if self.k == 1:
            self._items = by_age
            return
        if len(self._items) > WAITING_QUEUE_PREFIX_MATCH_MAX:
            # the plugin's long-queue path: k-LPM over all, then SGLang's deprioritisation over the head of that
            # order (plugin.cold_prefix_duplicates), the held-back ones last by age
            matches = {it[2]: self._oracle.match_len(it[1]) for it in by_age}
            ordered = klpm_order(by_age, [matches[it[2]] for it in by_age], self.k, picks=self.picks,
                                 ages=[it[2] for it in by_age])
            head = ordered[:WAITING_QUEUE_PREFIX_MATCH_MAX]
            held = held_back((matches[it[2]], it[1], None) for it in head)
            flags = {it[2]: (matches[it[2]], h) for it, h in zip(head, held, strict=True)}
            self.deprioritised += sum(held)
        else:
            self.sorted_passes += 1
            flags = {it[2]: f for it, f in zip(self._items, self._matches(), strict=True)}
        info = {it[2]: flags.get(it[2], (self._oracle.match_len(it[1]), False)) for it in by_age}
        head = [it for it in by_age if not info[it[2]][1]]
        tail = [it for it in by_age if info[it[2]][1]]
        ordered = klpm_order(head, [info[it[2]][0] for it in head], self.k, picks=self.picks,
                             ages=[it[2] for it in head])
        self._items = ordered + tail

    def peek(self) -> T | None:
        return self._items[0][0] if self._items else None

    def pop(self) -> T:
        self.picks += 1
        return self._items.pop(0)[0]

    def on_cache_insert(self, tokens: Tokens, start: int, end: int) -> None:
        """Nothing to do: SGLang re-matches every waiting request at the next pass."""
