"""Cost of ordering the waiting queue, per admitted request: our k-LPM queue vs match-everything-then-sort.

    python benchmarks/klpm_queue.py

SGLang orders its waiting queue by matching every waiting request against the radix cache on every scheduling
pass, then sorting; above 128 waiting it gives LPM up (too slow). Our KLPMQueue matches a prompt once on
arrival, raises keys only for requests a cache insert touches, and re-checks a pick lazily after evictions.

Set-up, identical for both: a radix KV cache smaller than the prompts' prefix mass (so evictions happen),
N waiting shared-prefix requests (gsp-shaped: many groups, long shared system prompts, unique questions);
each pass admits M requests by LPM, inserts their prompts into the cache (evicting as needed), and N is kept
constant with fresh arrivals. The straightforward ordering pays N matches per pass, so its cost per admitted
request falls as M grows; ours does not depend on M. M=1-2 is what the simulator's prefill rounds admit at
moderate load on this workload; M=8 is a busy engine's round.

Printed, per admitted request, side by side in one run: the ordering alone (straightforward: match all +
sort; ours: pop + push of the arrival + the queue's work on each cache insert) and the total with admission
(locking, eviction, cache insert: identical work in both).
Target: no slower at 128 waiting; at most 1 ms at 10,000.

A second table prints the cost per pick of each queue ordering of the shared queue (lpm, klpm:4, lpm-aging:64,
spf on its heap; hrrn by its vectorised scan) on the same set-up, one pick per pass (each pass advances the
passes and processed-token clocks), at 128 / 1,000 / 10,000 waiting. Target: under 1 ms each at 10,000.
"""

from __future__ import annotations

import time

import numpy as np

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.orders import QueueOrder, queue_order
from schedctl.policies.spec import parse_policy
from schedctl.sim.radix_cache import RadixKVCache
from schedctl.tokens import IdAllocator, TokenArray

GROUPS, PREFIX_TOKENS, QUESTION_TOKENS, ADMITTED = 512, 1024, 64, 320


class Source:
    def __init__(self, seed: int) -> None:
        self.ids = IdAllocator()
        self.prefixes = [self.ids.take(PREFIX_TOKENS) for _ in range(GROUPS)]
        self.rng = np.random.default_rng(seed)
        self.seq = 0

    def next(self) -> tuple[int, TokenArray]:
        g = int(self.rng.integers(GROUPS))
        self.seq += 1
        return self.seq, self.prefixes[g] + self.ids.take(QUESTION_TOKENS)


def admit(cache: RadixKVCache, tokens: TokenArray) -> None:
    node, _cached = cache.lock_prefix(tokens, len(tokens))
    cache.make_room(len(tokens) - node.depth)
    cache.unlock(cache.extend_locked(node, tokens, len(tokens)))


class Clock:
    """Accumulates the time spent in the ordering and in everything else (admission)."""

    def __init__(self) -> None:
        self.ordering_s = 0.0
        self.total_s = 0.0


def ours(waiting: int, per_pass: int, seed: int, order: QueueOrder | None = None) -> tuple[float, float]:
    src, cache = Source(seed), RadixKVCache(capacity_tokens=GROUPS * PREFIX_TOKENS // 4)
    q: KLPMQueue[TokenArray] = KLPMQueue(order or QueueOrder(None), oracle=cache)
    processed = 0
    clock = Clock()

    def timed_listener(tokens: TokenArray, start: int, end: int) -> None:
        t0 = time.perf_counter()
        q.on_cache_insert(tokens, start, end)
        clock.ordering_s += time.perf_counter() - t0

    cache.add_insert_listener(timed_listener)
    for _ in range(waiting):
        seq, toks = src.next()
        q.push(toks, seq, tokens=toks)
    for _ in range(ADMITTED // per_pass):
        t0 = time.perf_counter()
        q.begin_pass(processed)  # the clocks of lpm-aging (passes) and hrrn (prefill tokens run)
        clock.ordering_s += time.perf_counter() - t0
        for _ in range(per_pass):
            t0 = time.perf_counter()
            toks = q.pop()
            t1 = time.perf_counter()
            processed += len(toks) - cache.match_len(toks)
            admit(cache, toks)
            t2 = time.perf_counter()
            clock.ordering_s += t1 - t0
            clock.total_s += t2 - t0
        for _ in range(per_pass):  # an arrival's one match belongs to the ordering cost
            seq, toks = src.next()
            t0 = time.perf_counter()
            q.push(toks, seq, tokens=toks)
            dt = time.perf_counter() - t0
            clock.ordering_s += dt
            clock.total_s += dt
    n = ADMITTED // per_pass * per_pass
    return clock.ordering_s / n, clock.total_s / n


def straightforward(waiting: int, per_pass: int, seed: int) -> tuple[float, float]:
    src, cache = Source(seed), RadixKVCache(capacity_tokens=GROUPS * PREFIX_TOKENS // 4)
    queue = dict(src.next() for _ in range(waiting))
    clock = Clock()
    for _ in range(ADMITTED // per_pass):
        t0 = time.perf_counter()
        order = sorted(queue, key=lambda s: (-cache.match_len(queue[s]), s))  # match all, then sort
        t1 = time.perf_counter()
        for s in order[:per_pass]:
            admit(cache, queue.pop(s))
        t2 = time.perf_counter()
        clock.ordering_s += t1 - t0
        clock.total_s += t2 - t0
        for _ in range(per_pass):
            seq, toks = src.next()
            queue[seq] = toks
    n = ADMITTED // per_pass * per_pass
    return clock.ordering_s / n, clock.total_s / n


def main() -> None:
    print(__doc__.split("\n\n")[0].strip())
    print(" " * 26 + "ordering only, us per admitted request  |  with admission, us per admitted request")
    print(f"{'waiting':>8} {'per pass':>8} {'match-all+sort':>16} {'KLPMQueue':>10} {'speed-up':>9}  | "
          f"{'match-all+sort':>16} {'KLPMQueue':>10} {'speed-up':>9}")
    for waiting in (128, 1000, 10_000):
        for per_pass in (1, 8):
            base = min((straightforward(waiting, per_pass, s) for s in range(3)), key=lambda r: r[0])
            mine = min((ours(waiting, per_pass, s) for s in range(3)), key=lambda r: r[0])
            print(f"{waiting:>8,} {per_pass:>8} {base[0] * 1e6:>16,.1f} {mine[0] * 1e6:>10,.1f} "
                  f"{base[0] / mine[0]:>8.1f}x  | {base[1] * 1e6:>16,.1f} {mine[1] * 1e6:>10,.1f} "
                  f"{base[1] / mine[1]:>8.1f}x")
    labels = ["lpm", "klpm:4", "lpm-aging:64", "spf", "hrrn"]
    print()
    print("each ordering of the shared queue: ordering us per pick (one pick per pass; min of 3 seeds)")
    print(f"{'waiting':>8} " + " ".join(f"{label:>13}" for label in labels))
    for waiting in (128, 1000, 10_000):
        cells = [min(ours(waiting, 1, s, queue_order(parse_policy(label)))[0] for s in range(3)) for label in labels]
        print(f"{waiting:>8,} " + " ".join(f"{c * 1e6:>13,.1f}" for c in cells))


if __name__ == "__main__":
    main()
