"""Searches to compare the annealer with: exhaustive, random, and scipy's dual annealing (relaxed and rounded).

All evaluate through :class:`~schedctl.planner.anneal.BudgetedMemo`, so their evaluation counts mean the same as
the annealer's (distinct plans simulated) and a budget stops them at the same count.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import dual_annealing

from schedctl.planner.anneal import BudgetedMemo, BudgetSpent, OnEvaluation, ScoreFn
from schedctl.planner.objective import Objective, SearchResult, search_result
from schedctl.planner.space import PlanSpace

# The energy of an empty fleet (it serves nothing): λ × the largest penalty a plan can get, two full shares.
EMPTY_FLEET_PENALTY = 2.0


def exhaustive(
    space: PlanSpace, evaluate: ScoreFn, objective: Objective, on_evaluation: OnEvaluation | None = None,
    runners_up: int = 5,
) -> SearchResult:
    """Evaluate every plan of the space: the optimum, at ``space.size()`` evaluations."""
    memo = BudgetedMemo(evaluate, on_evaluation=on_evaluation)
    for plan in space.all_plans():
        memo(plan)
    return search_result("exhaustive", objective, memo.visited, runners_up, stopped="every plan evaluated")


def random_search(
    space: PlanSpace, evaluate: ScoreFn, objective: Objective, max_evaluations: int, seed: int = 0,
    on_evaluation: OnEvaluation | None = None, runners_up: int = 5,
) -> SearchResult:
    """Plans drawn uniformly at random (seeded) until ``max_evaluations`` distinct ones are evaluated."""
    rng = np.random.default_rng(seed)
    memo = BudgetedMemo(evaluate, max_evaluations, on_evaluation=on_evaluation)
    size = space.size()
    draws = 0
    stopped = "draw limit"
    try:
        while draws < 100 * max_evaluations:
            if len(memo.visited) >= size:
                stopped = "every plan evaluated"
                break
            memo(space.random_plan(rng))
            draws += 1
    except BudgetSpent:
        stopped = memo.stopped
    return search_result("random", objective, memo.visited, runners_up, steps=draws, stopped=stopped)


def dual_annealing_search(
    space: PlanSpace, evaluate: ScoreFn, objective: Objective, max_evaluations: int, seed: int = 0,
    no_local_search: bool = False, on_evaluation: OnEvaluation | None = None, runners_up: int = 5,
) -> SearchResult:
    """``scipy.optimize.dual_annealing`` on the relaxed problem, rounded to plans.

    The relaxation: one continuous coordinate per GPU type in [-0.5, max + 0.5), rounded to the replica count, and
    (with several candidate policies) one for the policy's index, rounded — an ordinal stand-in for a category, so
    "neighbouring" policies mean nothing to it. The function value is the energy of the rounded plan; an all-zero
    fleet gets the energy of serving nothing (λ × EMPTY_FLEET_PENALTY) without an evaluation.
    """
    limits = np.array(space.limits)
    n_policies = len(space.policies)
    bounds = [(-0.5, m + 0.4999) for m in space.limits]
    if n_policies > 1:
        bounds.append((-0.5, n_policies - 0.5001))
    memo = BudgetedMemo(evaluate, max_evaluations, on_evaluation=on_evaluation)
    calls = [0]

    def energy(x: np.ndarray) -> float:
        calls[0] += 1
        counts = np.clip(np.rint(x[: len(limits)]), 0, limits).astype(int)
        if not counts.any():
            return objective.penalty_usd_per_hour * EMPTY_FLEET_PENALTY
        policy = space.policies[int(np.clip(np.rint(x[-1]), 0, n_policies - 1))] if n_policies > 1 else \
            space.policies[0]
        return objective.energy(memo(space.make(counts.tolist(), policy)))

    stopped = "dual_annealing finished"
    try:
        dual_annealing(energy, bounds, maxfun=10**7, seed=seed, no_local_search=no_local_search)
    except BudgetSpent:
        stopped = memo.stopped
    method = "dual_annealing" + (" (no local search)" if no_local_search else "")
    return search_result(method, objective, memo.visited, runners_up, steps=calls[0], stopped=stopped)
