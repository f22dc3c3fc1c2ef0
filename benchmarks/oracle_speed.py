"""Solve times and node counts of the exact optimum (schedctl/bench/oracle.py) for n = 8, 10, 12 queries.

Run: .venv/bin/python benchmarks/oracle_speed.py [--seeds 5] [--sizes 8 10 12]

Instances: the k-LPM paper's regular-arrival shuffled queue (u=1024 shared + d=64 unique tokens, arrivals every
30% of a cold prefill, so the queue builds up) and random prefix trees released over a span that offers 1.5x and
10x the work a server does cold (10x, nearly simultaneous releases, is the hardest case found), under the default
cost model (Llama-3.1-8B-like, ~10k prefill tokens/s). The late
count's bound is FCFS's median TTFT on the instance. Prints per (family, cache, objective, n): the median and
worst solve time over the seeds, the median and worst node count, and the worst ratio of the best FCFS/LPM/k-LPM
(k=2..4) order to the optimum.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from schedctl.bench.instances import Query, random_prefix_tree, regular_arrival_shuffled_queue
from schedctl.bench.oracle import (
    CacheKind,
    LateCount,
    MaxTTFT,
    Objective,
    ServerModel,
    compare_to_optimum,
    policy_order,
    schedule,
    solve,
)
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, PolicySpec

POLICIES: tuple[PolicySpec, ...] = (FCFSSpec(), LPMSpec(), KLPMSpec(k=2), KLPMSpec(k=3), KLPMSpec(k=4))


def rasq(n: int, seed: int, model: ServerModel) -> list[Query]:
    groups = 4 if n % 4 == 0 else 2
    u, d = 1024, 64
    cold_s = model.prefill_s(u + d, 0)
    return regular_arrival_shuffled_queue(groups, n // groups, u, d, 0.3 * cold_s, seed)


def tree(load: float) -> Callable[[int, int, ServerModel], list[Query]]:
    """Random prefix trees whose releases span n x 0.05 s / load (a cold prompt costs ~0.05 s)."""

    def gen(n: int, seed: int, model: ServerModel) -> list[Query]:
        return random_prefix_tree(n, seed, prefix_nodes=6, segment_tokens=(64, 512), unique_tokens=(16, 128),
                                  arrival_span_s=n * 0.05 / load)

    return gen


def objective(kind: str, queries: list[Query], model: ServerModel) -> Objective:
    if kind == "max_ttft":
        return MaxTTFT()
    ttft_s = schedule(queries, policy_order(queries, model, 1), model).ttft_s
    return LateCount(ttft_bound_s=statistics.median(ttft_s))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 10, 12])
    args = ap.parse_args()
    print(f"{'family':8} {'cache':11} {'objective':10} {'n':>3} {'med_s':>8} {'max_s':>8} "
          f"{'med_nodes':>9} {'max_nodes':>9} {'worst_ratio':>11}")
    families = {"rasq": rasq, "tree@1.5": tree(1.5), "tree@10": tree(10.0)}
    for family, gen in families.items():
        caches: tuple[CacheKind, ...] = ("last_prompt", "radix")
        for cache in caches:
            model = ServerModel(cache=cache)
            for kind in ("max_ttft", "late_count"):
                for n in args.sizes:
                    times_s, nodes, ratios = [], [], []
                    for seed in range(args.seeds):
                        queries = gen(n, seed, model)
                        obj = objective(kind, queries, model)
                        t0 = time.perf_counter()
                        opt = solve(queries, model, obj)
                        times_s.append(time.perf_counter() - t0)
                        nodes.append(opt.nodes_expanded)
                        ratios.append(min(compare_to_optimum(queries, model, obj, p, optimum=opt).ratio
                                          for p in POLICIES))
                    print(f"{family:8} {cache:11} {kind:10} {n:3d} {statistics.median(times_s):8.3f} "
                          f"{max(times_s):8.3f} {statistics.median(nodes):9.0f} {max(nodes):9d} {max(ratios):11.3f}")


if __name__ == "__main__":
    main()
