"""The keys of the queue orderings beside LPM, and SGLang's own pass sort: one implementation of each.

Used by the shared queue (``policies/klpm.py``: the simulator's queue and :func:`~schedctl.policies.klpm.queue_order`,
which the SGLang plugin calls inside SGLang's scheduler) and by SGLang's own pass rules (``sglang:`` orders:
``sim/sglang_pass.py`` in the simulator, ``engine_adapter/sglang/plugin_state.py`` in SGLang).

From SGLang 0.5.23 ``srt/managers/schedule_policy.py``:

* ``hrrn`` — ``SchedulePolicy._sort_by_hrrn``: "Highest Response Ratio Next, with token-based aging". The
  scheduler keeps ``processed_tokens_counter``, the prefill tokens run so far (``scheduler.py``: each batch adds
  its ``extend_num_tokens``), and snapshots it into ``req.arrival_processed_tokens`` when a request enters the
  waiting queue (``Scheduler._add_request_to_queue``). A request's key is ``waited / uncached`` with ``waited =
  max(0, processed_tokens - arrival_processed_tokens)`` and ``uncached = len(origin_input_ids) -
  num_matched_prefix_tokens`` (``_uncached_len``): the classic ratio ``1 + wait / service`` minus its constant 1,
  with time measured in prefill tokens. No uncached work: first. Highest first; SGLang breaks ties by ``rid`` (a
  random hex string), schedctl's queue by age (deterministic; SGLang's pass model keeps the list order).
* ``spf`` — ``_shortest_prefill_work`` / ``_sort_by_shortest_prefill``: ``max(1, len(origin_input_ids) +
  len(output_ids) - num_matched_prefix_tokens)``, smallest first, ties by queue entry time.
* ``lpm-aging:N`` — LPM with aging as proposed upstream (not in 0.5.23): priority ``match_len + N * passes``,
  ``passes`` the scheduling passes the request has waited, highest first, ties to the oldest.
* SGLang's pass (``calc_priority``): ``_determine_active_policy`` turns ``lpm`` and ``hrrn`` into FCFS (the list
  is left as it is) above ``WAITING_QUEUE_PREFIX_MATCH_MAX`` (128) waiting; otherwise one stable sort of the
  persistent list, the temporarily deprioritised requests (``policies/inbatch.py``) last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from schedctl.policies.spec import KLPMSpec, PolicySpec, Rank

WAITING_QUEUE_PREFIX_MATCH_MAX = 128  # schedule_policy.py: lpm and hrrn are FCFS above this many waiting
FALLBACK_RANKS = frozenset({"lpm", "hrrn"})  # the ranks _determine_active_policy switches off


class QueueOrder(NamedTuple):
    """What the shared queue (``policies/klpm.py``) runs with: the engine-independent part of a KLPMSpec."""

    k: int | None
    rank: Rank = "lpm"
    aging_tokens_per_pass: int = 0


def queue_order(spec: PolicySpec) -> QueueOrder:
    """The shared queue's order for a queue-ordering spec (TypeError for the token-budget family). ``sglang``
    specs are run by the simulator's model of SGLang's pass (``sim/sglang_pass.py``), not this queue."""
    if isinstance(spec, KLPMSpec):
        return QueueOrder(spec.k, spec.rank, spec.aging_tokens_per_pass)
    raise TypeError(f"{spec.kind} is not a queue-ordering policy")


def spf_work(length: int, match: int) -> int:
    """Tokens a prefill still has to compute (``_shortest_prefill_work``): at least 1."""
    return max(1, length - match)


def hrrn_ratio(waited_tokens: int, length: int, match: int) -> float:
    """SGLang's HRRN key (response ratio minus 1): prefill tokens run since arrival per uncached token."""
    uncached = length - match
    if uncached <= 0:
        return math.inf  # "No prefill work; drain immediately."
    return max(0, waited_tokens) / uncached


def aging_priority(match: int, tokens_per_pass: int, passes_waited: int) -> int:
    """LPM with aging: the match, plus N tokens per scheduling pass waited."""
    return match + tokens_per_pass * passes_waited


def sglang_sorts(rank: Rank | None, waiting: int) -> bool:
    """Whether SGLang's pass sorts its list (``rank`` None: fcfs, never sorted)."""
    return rank is not None and not (rank in FALLBACK_RANKS and waiting > WAITING_QUEUE_PREFIX_MATCH_MAX)


def sglang_pass_order(
    rank: Rank | None, matches: Sequence[int], lengths: Sequence[int], held: Sequence[bool],
    waited_tokens: Sequence[int],
) -> list[int]:
    """Positions of SGLang's list after one pass's sort (``rank`` None: fcfs). Stable: ties keep the list order.

    ``lengths`` is what each rank counts: for hrrn the prompt (``origin_input_ids``), for spf the prompt and the
    output so far; ``held``: deprioritised this pass (last); ``waited_tokens``: hrrn's processed tokens since arrival.
    """
    n = len(matches)
    if not sglang_sorts(rank, n):
        return list(range(n))
    # (deprioritised, key): the held-back ones last; among them lpm and hrrn keep the list order, spf its key
    if rank == "lpm":
        keys: list[tuple[bool, float]] = [(h, 0 if h else -m) for m, h in zip(matches, held, strict=True)]
    elif rank == "hrrn":
        keys = [(h, 0 if h else -hrrn_ratio(w, ln, m))
                for m, ln, h, w in zip(matches, lengths, held, waited_tokens, strict=True)]
    else:  # spf: ties by entry time, the list order
        keys = [(h, spf_work(ln, m)) for m, ln, h in zip(matches, lengths, held, strict=True)]
    return sorted(range(n), key=keys.__getitem__)


class RatioScan:
    """The waiting requests' HRRN inputs in arrays, for one vectorised argmax per pick.

    Why not a heap: a request's ratio ``waited / uncached`` grows with the processed-token clock at a rate of
    ``1 / uncached``, so two requests' order flips as the clock runs (lines of different slopes cross) and no
    key is fixed. A numpy pass over 10,000 waiting takes well under a millisecond (``benchmarks/klpm_queue.py``).
    It computes :func:`hrrn_ratio` for every slot at once (the same formula; a test checks they agree).
    Ties go to the smallest ``seq`` (the oldest). Slots of removed requests are reused.
    """

    def __init__(self) -> None:
        self._top = 0
        self._free: list[int] = []
        self.items: list[object] = []  # what each slot holds (the caller's entry)
        self._length = self._key = self._born = self._seq = np.zeros(0, dtype=np.int64)
        self._alive = np.zeros(0, dtype=np.bool_)
        self._alloc(64)

    def _alloc(self, cap: int) -> None:
        old = self._top
        grow = [("length", np.int64), ("key", np.int64), ("born", np.int64), ("seq", np.int64), ("alive", np.bool_)]
        for name, dtype in grow:
            arr: np.ndarray = np.zeros(cap, dtype=dtype)
            if old:
                arr[:old] = getattr(self, "_" + name)[:old]
            setattr(self, "_" + name, arr)

    def add(self, seq: int, length: int, key: int, born_tokens: int, item: object) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._top == len(self._seq):
                self._alloc(2 * len(self._seq))
            slot = self._top
            self._top += 1
            self.items.append(None)
        self.items[slot] = item
        self._seq[slot], self._length[slot], self._key[slot], self._born[slot] = seq, length, key, born_tokens
        self._alive[slot] = True
        return slot

    def set_key(self, slot: int, key: int) -> None:
        self._key[slot] = key

    def remove(self, slot: int) -> None:
        self._alive[slot] = False
        self.items[slot] = None
        self._free.append(slot)

    def best(self, processed_tokens: int) -> int:
        """The live slot with the highest ratio at this clock (ties: the smallest seq); there must be one."""
        n = self._top
        uncached = self._length[:n] - self._key[:n]
        waited = np.maximum(processed_tokens - self._born[:n], 0)
        ratio = np.where(uncached > 0, waited / np.maximum(uncached, 1), np.inf)
        ratio[~self._alive[:n]] = -np.inf
        tied = np.flatnonzero(ratio == ratio.max())
        return int(tied[np.argmin(self._seq[tied])]) if len(tied) > 1 else int(tied[0])
