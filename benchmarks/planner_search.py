"""Capacity planner: the annealer against exhaustive search, scipy's dual annealing and random search; re-planning.

    .venv/bin/python benchmarks/planner_search.py            # ~3 min on 2 cores
    .venv/bin/python benchmarks/planner_search.py --quick    # a smaller space, < 1 min

The instance: Llama-3.1-8B serving the gsp shared-prefix workload (1000 requests, Poisson, seed 0), SLO TTFT
<= 0.5 s and TBT <= 100 ms for 99%, prefix-affinity routing; the catalog's H100, A100 and L40S (config/gpus.toml
prices) with each type's limit cut to --max-replicas so that exhaustive search stays affordable; policies fcfs,
klpm:4, lpm. Every plan is simulated once, by the exhaustive pass (in --jobs processes); the searches then read
those scores — evaluation is deterministic, so this changes no result — and each counts its own evaluations
(distinct plans it asked for) through its own BudgetedMemo, as it would against the simulator.

Printed: (1) exhaustive search's optimum and plan count; the annealer's plan, evaluations and whether it is the
optimum for each seed; (2) the annealer, dual_annealing (relaxed and rounded) and random search at one evaluation
budget; (3) re-planning after the request rate doubles, from the current plan, against planning from scratch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from schedctl.planner import (
    SLO,
    AnnealConfig,
    FleetEvaluator,
    Objective,
    Plan,
    PlanningProblem,
    PlanScore,
    PlanSpace,
    SearchResult,
    anneal,
    offerings_from_catalog,
    reanneal,
)
from schedctl.planner.baselines import dual_annealing_search, random_search, search_result
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec
from schedctl.sim.profiles import load_model
from schedctl.workloads.registry import WorkloadConfig, parse_workload

SLO_TARGET = SLO(ttft_s=0.5, tbt_s=0.1, attainment=0.99)


def problem(rate_rps: float, num_requests: int) -> PlanningProblem:
    wl = WorkloadConfig(workload=parse_workload("gsp"), rate=rate_rps, num_requests=num_requests, seed=0)
    return PlanningProblem(workload=wl, model=load_model("llama-3.1-8b"), slo=SLO_TARGET)


def space(max_replicas: int) -> PlanSpace:
    offerings, _skipped = offerings_from_catalog(load_model("llama-3.1-8b"), gpus=["h100-sxm", "a100-80gb", "l40s"])
    capped = tuple(o.model_copy(update={"max_replicas": min(o.max_replicas, max_replicas)}) for o in offerings)
    return PlanSpace(offerings=capped, policies=(FCFSSpec(), KLPMSpec(k=4), LPMSpec()))


def _score_chunk(args: tuple[PlanningProblem, PlanSpace, list[Plan]]) -> list[PlanScore]:
    prob, sp, plans = args
    evaluator = FleetEvaluator(prob, sp)
    return [evaluator(p) for p in plans]


def score_all(prob: PlanningProblem, sp: PlanSpace, jobs: int) -> dict[Plan, PlanScore]:
    plans = list(sp.all_plans())
    chunks = [plans[i::jobs] for i in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        scored = [s for part in pool.map(_score_chunk, [(prob, sp, c) for c in chunks]) for s in part]
    return {s.plan: s for s in scored}


def is_optimal(result: SearchResult, optimum: PlanScore) -> bool:
    return result.feasible and abs(result.best.cost_usd_per_hour - optimum.cost_usd_per_hour) < 1e-9


def first_at(result: SearchResult, cost_usd_per_hour: float) -> int | None:
    """Evaluations made when the search first evaluated a feasible plan costing at most ``cost_usd_per_hour``."""
    return next((i + 1 for i, s in enumerate(result.visited)
                 if s.feasible and s.cost_usd_per_hour <= cost_usd_per_hour + 1e-9), None)


def summary_row(name: str, runs: Sequence[SearchResult], optimum: PlanScore) -> str:
    costs = [r.best.cost_usd_per_hour if r.feasible else float("nan") for r in runs]
    evals = [r.evaluations for r in runs]
    hits = sum(is_optimal(r, optimum) for r in runs)
    return (f"{name:<28} {hits:>3}/{len(runs):<3} {statistics.mean(costs):>9.2f} {min(costs):>7.2f} "
            f"{max(costs):>7.2f} {statistics.mean(evals):>8.1f} {max(evals):>6}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=150, help="evaluations per search")
    ap.add_argument("--max-replicas", type=int, default=6, help="per-type limit (the catalog's, cut to this)")
    ap.add_argument("--rate", type=float, default=120.0, help="request rate (req/s); re-planning starts at half")
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="--max-replicas 4 --rate 80 --budget 100")
    args = ap.parse_args()
    if args.quick:
        args.max_replicas, args.rate, args.budget = 4, 80.0, 100
    sp = space(args.max_replicas)
    obj = Objective(penalty_usd_per_hour=Objective.default_penalty_usd_per_hour(sp.max_price_usd_per_hour))
    prob = problem(args.rate, args.num_requests)
    print(f"instance: gsp at {args.rate:g} req/s, {args.num_requests} requests; {', '.join(sp.keys)} up to "
          f"{args.max_replicas} each; policies fcfs, klpm:4, lpm; {sp.size()} plans; SLO {SLO_TARGET}")

    started = time.monotonic()
    scores = score_all(prob, sp, args.jobs)
    exhaustive_s = time.monotonic() - started
    full = search_result("exhaustive", obj, [scores[p] for p in sp.all_plans()])
    optimum = full.best
    print(f"\n(1) exhaustive: {full.evaluations} evaluations ({exhaustive_s:.0f} s on {args.jobs} processes, "
          f"{exhaustive_s * args.jobs / full.evaluations * 1e3:.0f} ms per plan); optimum "
          f"{optimum.plan.label()} at ${optimum.cost_usd_per_hour:.2f}/h (attainment {optimum.attainment:.4f})")
    lookup: Callable[[Plan], PlanScore] = scores.__getitem__

    def annealer(seed: int) -> SearchResult:
        return anneal(sp, lookup, obj, AnnealConfig(seed=seed, max_evaluations=args.budget))

    seeds = range(args.seeds)
    runs = [annealer(s) for s in seeds]
    print(f"    annealer, budget {args.budget} evaluations:")
    print(f"    {'seed':>4} {'plan found':<44} {'$/h':>6} {'optimum':>7} {'evals':>5} {'to best':>7}  stopped")
    for seed, r in zip(seeds, runs, strict=True):
        print(f"    {seed:>4} {r.best.plan.label():<44} {r.best.cost_usd_per_hour:>6.2f} "
              f"{'yes' if is_optimal(r, optimum) else 'NO':>7} {r.evaluations:>5} {r.evaluations_to_best:>7}  "
              f"{r.stopped}")
    hits = sum(is_optimal(r, optimum) for r in runs)
    print(f"    optimum found in {hits}/{len(runs)} seeded runs; evaluations: mean "
          f"{statistics.mean(r.evaluations for r in runs):.1f}, max {max(r.evaluations for r in runs)} "
          f"(exhaustive: {full.evaluations})")

    print(f"\n(2) same objective, same budget ({args.budget} evaluations), seeds 0..{args.seeds - 1}:")
    print(f"    {'method':<28} {'optimum':>7} {'mean $/h':>9} {'min':>7} {'max':>7} {'evals':>8} {'max':>6}")
    rows = [
        ("simulated annealing (ours)", runs),
        ("dual_annealing (rounded)", [dual_annealing_search(sp, lookup, obj, args.budget, seed=s) for s in seeds]),
        ("random search", [random_search(sp, lookup, obj, args.budget, seed=s) for s in seeds]),
    ]
    for name, results in rows:
        print("    " + summary_row(name, results, optimum))
    print("    ($/h of the best feasible plan found; 'optimum': runs that found the exhaustive optimum.")
    print("    dual_annealing's L-BFGS-B local search sees a zero gradient on the rounded, piecewise-constant")
    print("    objective: with no_local_search=True it visits the same plans.)")

    half = problem(args.rate / 2, args.num_requests)
    current = anneal(sp, FleetEvaluator(half, sp), obj, AnnealConfig(seed=0, max_evaluations=args.budget))
    print(f"\n(3) the rate doubles from {args.rate / 2:g} to {args.rate:g} req/s. Current plan (annealed at "
          f"{args.rate / 2:g}): {current.best.plan.label()} ${current.best.cost_usd_per_hour:.2f}/h; at "
          f"{args.rate:g} it {'still meets' if scores[current.best.plan].feasible else 'misses'} the SLO "
          f"(attainment {scores[current.best.plan].attainment:.4f})")
    within = optimum.cost_usd_per_hour * 1.10
    print(f"    evaluations until: a feasible plan | one within 10% of the optimum (${within:.2f}/h) | the optimum")
    print(f"    {'search':<34} {'feasible':>9} {'<=+10%':>7} {'optimum':>8} {'found':>6}")
    starts = [
        ("replan from the current plan", [reanneal(current.best.plan, sp, lookup, obj,
                                                   AnnealConfig(seed=s, max_evaluations=args.budget)) for s in seeds]),
        ("scratch (smallest fleet)", runs),
        ("scratch (random plan)", [anneal(sp, lookup, obj, AnnealConfig(seed=s, max_evaluations=args.budget,
                                                                          start="random")) for s in seeds]),
    ]
    for name, results in starts:
        def mean_of(values: list[int | None]) -> str:
            got = [v for v in values if v is not None]
            return f"{statistics.mean(got):.1f}" + ("" if len(got) == len(values) else f" ({len(got)} runs)")

        print(f"    {name:<34} {mean_of([r.evaluations_to_feasible for r in results]):>9} "
              f"{mean_of([first_at(r, within) for r in results]):>7} "
              f"{mean_of([first_at(r, optimum.cost_usd_per_hour) for r in results]):>8} "
              f"{sum(is_optimal(r, optimum) for r in results):>3}/{len(results)}")
    print("    (means over the seeds; a run that never got there is left out of its mean and counted beside it)")


if __name__ == "__main__":
    main()
