"""Capacity planner: GPU types, replica counts and scheduling policy for a workload and its SLO, at least cost.

A candidate plan (``space.Plan``) is a fleet ``{GPU type: replicas}`` plus the policy its replicas run; it is scored
by simulating the workload on it (``fleet.FleetEvaluator``: a router spreads requests over independent replicas)
and the objective joins cost per hour and an SLO penalty (``objective``). Simulated annealing (``anneal``) searches
the plans, memoised, seeded and within a budget, and re-anneals from the current plan when the workload changes
(``replan``). ``baselines`` holds exhaustive search, random search and scipy's dual annealing for comparison.
"""

from schedctl.planner.anneal import AnnealConfig, BudgetedMemo, anneal, plan_capacity, reanneal, replan
from schedctl.planner.fleet import FleetEvaluator, PlanningProblem
from schedctl.planner.objective import SLO, Objective, PlanScore, SearchResult
from schedctl.planner.space import Offering, Plan, PlanSpace, offerings_from_catalog

__all__ = [
    "SLO",
    "AnnealConfig",
    "BudgetedMemo",
    "FleetEvaluator",
    "Objective",
    "Offering",
    "Plan",
    "PlanScore",
    "PlanSpace",
    "PlanningProblem",
    "SearchResult",
    "anneal",
    "offerings_from_catalog",
    "plan_capacity",
    "reanneal",
    "replan",
]
