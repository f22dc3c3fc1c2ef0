"""One call that orders a list of waiting requests as the shared queue (``policies/klpm.py``) would pop them.

The SGLang plugin orders SGLang's waiting list with it at every scheduling pass (from SGLang's own match lengths),
and the simulator's model of the plugin (``sim/sglang_pass.py``) does the same, so both run one implementation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.orders import QueueOrder, aging_priority, hrrn_ratio, spf_work

T = TypeVar("T")


def klpm_order(
    items: Sequence[T], match_lens: Sequence[int], k: int | None, picks: int = 0, ages: Iterable[int] | None = None
) -> list[T]:
    """Order ``items`` by k-LPM given each one's cached-prefix length (:func:`order_waiting` with rank lpm)."""
    return order_waiting(items, match_lens, QueueOrder(k), picks=picks, ages=ages)


def order_waiting(
    items: Sequence[T], match_lens: Sequence[int], order: QueueOrder, *, picks: int = 0,
    ages: Iterable[int] | None = None, lengths: Sequence[int] | None = None,
    born_passes: Sequence[int] | None = None, passes: int = 0,
    born_tokens: Sequence[int] | None = None, processed_tokens: int = 0,
) -> list[T]:
    """Order ``items`` as the queue would pop them under ``order``, given each one's cached-prefix length.

    ``ages`` gives each item's arrival rank (default: list order, oldest first); ``picks`` is the pick counter
    to start from, so a caller that admits part of the order each pass can keep the cycle going across passes.
    spf and hrrn read ``lengths`` (the tokens each prefill covers), lpm-aging ``born_passes`` against ``passes``,
    hrrn ``born_tokens`` against ``processed_tokens`` (SGLang's processed-prefill-token clock).

    Without an oldest-first turn (k = None) the order is one sort by the rank's key (the same keys as the queue;
    a test checks they agree), so a long queue costs O(n log n), not a scan per pick.
    """
    seqs = list(ages) if ages is not None else list(range(len(items)))
    n = len(items)
    if order.k is not None:
        q: KLPMQueue[T] = KLPMQueue(order)
        q.picks = picks
        for item, m, seq in zip(items, match_lens, seqs, strict=True):
            q.push(item, seq, match_len=m)
        return [q.pop() for _ in range(n)]
    lens = lengths if lengths is not None else [0] * n
    if order.rank == "hrrn":
        born = born_tokens if born_tokens is not None else [processed_tokens] * n
        keys: list[float] = [-hrrn_ratio(processed_tokens - b, ln, m)
                             for m, ln, b in zip(match_lens, lens, born, strict=True)]
    elif order.rank == "spf":
        keys = [spf_work(ln, m) for m, ln in zip(match_lens, lens, strict=True)]
    else:
        bp = born_passes if born_passes is not None else [passes] * n
        n_aging = order.aging_tokens_per_pass
        keys = [-aging_priority(m, n_aging, passes - b) for m, b in zip(match_lens, bp, strict=True)]
    ranked = sorted(range(n), key=lambda i: (keys[i], seqs[i]))
    return [items[i] for i in ranked]
