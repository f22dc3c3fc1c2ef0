"""SGLang 0.5.23's own waiting-queue order, pass by pass: the ``sglang:`` policies and the ``sglang_lpm`` option.

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

``sglang:fcfs`` is SGLang's FCFS: the list, never sorted. ``sglang:hrrn`` and ``sglang:spf`` sort the same list by
their keys (``policies/orders.py``: ``sglang_pass_order``, shared with the plugin); hrrn falls back like lpm above
128 waiting, spf never does. The ``sglang_lpm`` engine option runs fcfs, lpm, hrrn and spf as these (SGLang
without the plugin has no other orders); other k are not SGLang's own orders and run on the shared queue.

With ``plugin=True`` the queue orders as the schedctl plugin does inside SGLang (``engine_adapter/sglang/
plugin.py``, any queue policy): fcfs by age; otherwise, at most 128 waiting, SGLang's deprioritisation as above,
then the others by the policy on their match lengths (``order_waiting``, the pick counter advanced by the requests
admitted since the previous pass) and the deprioritised ones last by age; above 128 waiting, the policy over all
of them, then the deprioritisation over the first 128 of that order (the plugin re-matches a budget of them per
pass; here every match is fresh).
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

from schedctl.policies.inbatch import held_back
from schedctl.policies.klpm import PrefixOracle
from schedctl.policies.orders import WAITING_QUEUE_PREFIX_MATCH_MAX, queue_order, sglang_pass_order, sglang_sorts
from schedctl.policies.radix import Tokens
from schedctl.policies.spec import KLPMSpec
from schedctl.policies.waiting import order_waiting
from schedctl.tokens import as_tokens

T = TypeVar("T")

__all__ = ["WAITING_QUEUE_PREFIX_MATCH_MAX", "SGLangPassQueue"]


class _Waiting(NamedTuple, Generic[T]):
    item: T
    tokens: Tokens
    seq: int
    born_pass: int  # passes counted when it joined the list (aging)
    born_tokens: int  # processed prefill tokens when it joined the list (SGLang's arrival_processed_tokens)


class SGLangPassQueue(Generic[T]):
    """The waiting list of SGLang's scheduler, sorted once per pass by :meth:`begin_pass`.

    Same calls as :class:`schedctl.policies.klpm.KLPMQueue` where the batcher uses them (push, peek, pop,
    set_policy, on_cache_insert, len, begin_pass).
    """

    def __init__(self, spec: KLPMSpec, oracle: PrefixOracle, plugin: bool = False) -> None:
        self._oracle = oracle
        self._items: list[_Waiting[T]] = []  # in SGLang's list order
        self.plugin = plugin
        self.picks = 0  # plugin: requests admitted since the policy was set (the k-LPM pick counter)
        self.spec = spec
        self.set_policy(spec)
        self.passes = 0
        self.processed_tokens = 0  # the engine's prefill tokens run so far (SGLang's processed_tokens_counter)
        self.sorted_passes = 0  # passes that matched and sorted (at most 128 waiting)
        self.deprioritised = 0  # requests deprioritised, summed over passes

    def set_policy(self, spec: KLPMSpec) -> None:
        if not spec.sglang and not self.plugin:
            raise ValueError(f"SGLang's own orders are sglang:fcfs, sglang:lpm, sglang:hrrn, sglang:spf, not {spec}")
        self.spec = spec
        self.picks = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T, seq: int, tokens: Tokens | None = None) -> None:
        assert tokens is not None, "SGLang's pass matches prompts: push needs the tokens"
        self._items.append(_Waiting(item, as_tokens(tokens), seq, self.passes, self.processed_tokens))

    def items(self) -> list[T]:
        return [w.item for w in self._items]

    def begin_pass(self, processed_tokens: int | None = None) -> None:
        """Order the list as ``SchedulePolicy.calc_priority`` does at the start of a prefill pass."""
        self.passes += 1
        if processed_tokens is not None:
            self.processed_tokens = processed_tokens
        if not self.spec.sglang:
            self._plugin_pass()
            return
        rank = None if self.spec.k == 1 else self.spec.rank
        if not sglang_sorts(rank, len(self._items)):
            return  # FCFS, or lpm/hrrn switched off above 128 waiting: the list keeps its order
        self.sorted_passes += 1
        matched = self._matches()
        waited = [self.processed_tokens - w.born_tokens for w in self._items]
        order = sglang_pass_order(rank, [m for m, _h in matched], [len(w.tokens) for w in self._items],
                                  [h for _m, h in matched], waited)
        self._items = [self._items[i] for i in order]

    def _matches(self) -> list[tuple[int, bool]]:
        """(cached match, deprioritised) of each waiting request, in list order (``_compute_prefix_matches``)."""
        matches = [self._oracle.match_len(w.tokens) for w in self._items]
        held = held_back((m, w.tokens, None) for m, w in zip(matches, self._items, strict=True))
        self.deprioritised += sum(held)
        return list(zip(matches, held, strict=True))

    def _order(self, waiting: list[_Waiting[T]], matches: list[int]) -> list[_Waiting[T]]:
        """The plugin's order (``order_waiting``, shared with it) of ``waiting`` (oldest first)."""
        return order_waiting(
            waiting, matches, queue_order(self.spec), picks=self.picks, ages=[w.seq for w in waiting],
            lengths=[len(w.tokens) for w in waiting], born_passes=[w.born_pass for w in waiting],
            passes=self.passes, born_tokens=[w.born_tokens for w in waiting], processed_tokens=self.processed_tokens)

    def _plugin_pass(self) -> None:
        by_age = sorted(self._items, key=lambda w: w.seq)
        if self.spec.k == 1:
            self._items = by_age
            return
        if len(self._items) > WAITING_QUEUE_PREFIX_MATCH_MAX:
            # the plugin's long-queue path: the policy over all, then SGLang's deprioritisation over the head of
            # that order (plugin.cold_prefix_duplicates), the held-back ones last by age
            matches = {w.seq: self._oracle.match_len(w.tokens) for w in by_age}
            ordered = self._order(by_age, [matches[w.seq] for w in by_age])
            head = ordered[:WAITING_QUEUE_PREFIX_MATCH_MAX]
            held = held_back((matches[w.seq], w.tokens, None) for w in head)
            flags = {w.seq: (matches[w.seq], h) for w, h in zip(head, held, strict=True)}
            self.deprioritised += sum(held)
        else:
            self.sorted_passes += 1
            flags = {w.seq: f for w, f in zip(self._items, self._matches(), strict=True)}
        info = {w.seq: flags.get(w.seq, (self._oracle.match_len(w.tokens), False)) for w in by_age}
        head = [w for w in by_age if not info[w.seq][1]]
        tail = [w for w in by_age if info[w.seq][1]]
        self._items = self._order(head, [info[w.seq][0] for w in head]) + tail

    def peek(self) -> T | None:
        return self._items[0].item if self._items else None

    def pop(self) -> T:
        self.picks += 1
        return self._items.pop(0).item

    def on_cache_insert(self, tokens: Tokens, start: int, end: int) -> None:
        """Nothing to do: SGLang re-matches every waiting request at the next pass."""
