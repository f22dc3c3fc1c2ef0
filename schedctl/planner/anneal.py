"""Simulated annealing over plans, and re-annealing from the current plan when the workload changes.

Hand-written on purpose: the space is discrete and mixed (replica counts per GPU type, a policy), an evaluation
is a simulation worth memoising, and the search must restart from a given plan. ``scipy.optimize.dual_annealing``
works on a continuous box and counts every call; it is kept only as a baseline (``baselines.py``).

The loop (one seeded ``numpy.random.Generator`` makes every random choice, so the same seed gives the same plan),
from the smallest fleet (one replica of the cheapest type — what an operator has before any capacity exists; or,
``start="random"``, a random plan):

* propose a neighbour of the current plan (``PlanSpace.neighbour``: ±1 replica, swap a type, change the policy);
* accept it by the Metropolis rule on the energy ``Objective.energy`` (cost + λ × penalty, $/h): draw u, accept
  iff energy <= current energy − T·ln(u) (always if not worse, else with probability exp(−ΔE / T)). Scoring is
  memoised (a plan seen before costs no evaluation) and lazy: the energy is at least the cost, so a candidate
  whose cost alone is above the threshold is rejected without simulating it — unless it could still rank above
  the best plan (``Objective.could_beat``). The walk is the same as with every candidate simulated;
* keep the best plan by ``Objective.rank`` (feasible before infeasible in constraint mode);
* cool geometrically, T ← T × ``cooling`` per proposal, from T0 = ``initial_temperature_usd_per_hour`` (default:
  the mean price of the GPU types, so adding a replica of average price is at first accepted with probability
  1/e, and a reheat to half of it still crosses a barrier of one such replica now and then);
* reheat — T ← T0 × ``reheat_temperature_ratio`` and go back to the best plan — when T falls below
  T0 × ``min_temperature_ratio`` or after ``reheat_after_steps`` proposals without a new best;
* stop at the evaluation budget, the time budget, the proposal limit, when every plan has been evaluated, or
  when ``max_idle_steps`` proposals in a row evaluated nothing new (converged). Proposals are cheap next to a
  simulation, so patience is long.

:func:`reanneal` starts from the current plan (projected into the space, in case the offerings changed) instead
of the smallest fleet: after a change of workload it is usually a few moves from the new best plan. It keeps the
same schedule: a cooler start converged in fewer evaluations but, on one of the benchmark instances, found the
new optimum in 15 of 40 seeded runs at T0 × 0.25 (against 40 of 40).

A limit, measured: SA is a heuristic. On the simulated instances of ``benchmarks/planner_search.py`` it found the
exhaustive optimum in every seeded run; on a synthetic landscape built to be deceptive (the optimum a homogeneous
fleet at its availability limit, 1.5% cheaper than a mixed fleet whose basin is far from it) it mostly stops at
the runner-up (optimum in 2 of 30 seeded runs at 150 evaluations of 942), and restarting from random plans once
converged did little (9 of 30 at 300 evaluations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schedctl.planner.fleet import FleetEvaluator, PlanningProblem
from schedctl.planner.objective import Objective, PlanScore, SearchResult, search_result
from schedctl.planner.space import Plan, PlanSpace
from schedctl.workloads.registry import WorkloadConfig

ScoreFn = Callable[[Plan], PlanScore]
OnEvaluation = Callable[[PlanScore, int], None]  # (the new score, evaluations so far)


class AnnealConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    start: Literal["smallest", "random"] = Field(
        "smallest", description="where a search from scratch starts: the smallest fleet, or a random plan")
    max_evaluations: int | None = Field(150, ge=1, description="distinct plans to simulate at most")
    max_time_s: float | None = Field(None, gt=0, description="wall-clock budget (a run cut by it is not reproducible)")
    max_steps: int = Field(100_000, ge=1, description="proposals at most (memoised ones are free)")
    max_idle_steps: int = Field(10_000, ge=1, description="stop after this many proposals in a row evaluate nothing")
    initial_temperature_usd_per_hour: float | None = Field(None, gt=0, description="T0; None: the mean GPU price")
    cooling: float = Field(0.9, gt=0, lt=1, description="T is multiplied by this after every proposal")
    min_temperature_ratio: float = Field(0.01, gt=0, lt=1, description="reheat when T < T0 × this")
    reheat_after_steps: int = Field(30, ge=1, description="reheat after this many proposals without a new best")
    reheat_temperature_ratio: float = Field(0.5, gt=0, le=1, description="a reheat sets T = T0 × this")
    lazy: bool = Field(True, description="reject unsimulated a candidate whose cost alone fails the Metropolis test")
    runners_up: int = Field(5, ge=0)


DEFAULT_CONFIG = AnnealConfig()


class BudgetSpent(Exception):
    """The evaluation or time budget is spent."""


class BudgetedMemo:
    """Scores each distinct plan once, within a budget; ``visited`` keeps the scores in evaluation order.

    Every search (the annealer and the baselines) evaluates through one of these, so "evaluations" means the
    same thing for all of them: distinct plans simulated. Asking for a new plan past the budget raises BudgetSpent.
    """

    def __init__(self, evaluate: ScoreFn, max_evaluations: int | None = None, max_time_s: float | None = None,
                 on_evaluation: OnEvaluation | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.evaluate = evaluate
        self.max_evaluations = max_evaluations
        self.max_time_s = max_time_s
        self.on_evaluation = on_evaluation
        self.clock = clock
        self.started_s = clock()
        self.scores: dict[Plan, PlanScore] = {}
        self.visited: list[PlanScore] = []
        self.stopped = ""

    def __call__(self, plan: Plan) -> PlanScore:
        score = self.scores.get(plan)
        if score is not None:
            return score
        if self.max_evaluations is not None and len(self.visited) >= self.max_evaluations:
            self.stopped = "evaluation budget"
            raise BudgetSpent
        if self.max_time_s is not None and self.clock() - self.started_s >= self.max_time_s:
            self.stopped = "time budget"
            raise BudgetSpent
        score = self.scores[plan] = self.evaluate(plan)
        self.visited.append(score)
        if self.on_evaluation is not None:
            self.on_evaluation(score, len(self.visited))
        return score


def anneal(
    space: PlanSpace, evaluate: ScoreFn, objective: Objective, config: AnnealConfig = DEFAULT_CONFIG,
    start: Plan | None = None, on_evaluation: OnEvaluation | None = None,
    clock: Callable[[], float] = time.monotonic, method: str = "anneal",
) -> SearchResult:
    """Search ``space`` for the best plan under ``objective``, from ``start`` (None: as ``config.start`` says)."""
    rng = np.random.default_rng(config.seed)
    memo = BudgetedMemo(evaluate, config.max_evaluations, config.max_time_s, on_evaluation, clock)
    if start is None:
        start = space.random_plan(rng) if config.start == "random" else space.smallest_plan()
    current_plan = start
    space.check(current_plan)
    current = best = memo(current_plan)
    t0 = config.initial_temperature_usd_per_hour or space.mean_price_usd_per_hour or 1.0
    temperature = t0
    steps = reheats = since_best = idle = 0
    size = space.size()
    stopped = "proposal limit"
    try:
        while steps < config.max_steps:
            if len(memo.visited) >= size:
                stopped = "every plan evaluated"
                break
            if idle >= config.max_idle_steps:
                stopped = "converged"
                break
            candidate_plan = space.neighbour(current_plan, rng)
            steps += 1
            # Metropolis: accept iff energy <= threshold. The energy is at least the cost, so a candidate whose
            # cost alone passes the threshold is rejected unsimulated — unless it could still be the best plan.
            threshold = objective.energy(current) - temperature * math.log(1.0 - rng.random())
            cost = space.cost_usd_per_hour(candidate_plan)
            if config.lazy and cost > threshold and not objective.could_beat(cost, best) \
                    and candidate_plan not in memo.scores:
                since_best += 1
                idle += 1
            else:
                known = len(memo.visited)
                candidate = memo(candidate_plan)
                idle = idle + 1 if len(memo.visited) == known else 0
                if objective.energy(candidate) <= threshold:
                    current_plan, current = candidate_plan, candidate
                if objective.rank(candidate) < objective.rank(best):
                    best, since_best = candidate, 0
                else:
                    since_best += 1
            temperature *= config.cooling
            if temperature < t0 * config.min_temperature_ratio or since_best >= config.reheat_after_steps:
                temperature = t0 * config.reheat_temperature_ratio
                current_plan, current = best.plan, best
                since_best = 0
                reheats += 1
    except BudgetSpent:
        stopped = memo.stopped
    return search_result(method, objective, memo.visited, config.runners_up, steps=steps, reheats=reheats,
                         stopped=stopped)


def reanneal(
    from_plan: Plan, space: PlanSpace, evaluate: ScoreFn, objective: Objective, config: AnnealConfig = DEFAULT_CONFIG,
    on_evaluation: OnEvaluation | None = None, clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Anneal from the current plan (projected into ``space``, in case the offerings changed)."""
    return anneal(space, evaluate, objective, config, start=space.project(from_plan), on_evaluation=on_evaluation,
                  clock=clock, method="replan")


# -- by simulation -------------------------------------------------------------------------------------------------


def plan_capacity(
    problem: PlanningProblem, space: PlanSpace, objective: Objective, config: AnnealConfig = DEFAULT_CONFIG,
    on_evaluation: OnEvaluation | None = None,
) -> SearchResult:
    """The best plan for ``problem``'s workload and SLO, every candidate scored by simulation."""
    return anneal(space, FleetEvaluator(problem, space), objective, config, on_evaluation=on_evaluation)


def replan(
    from_plan: Plan, new_workload: WorkloadConfig, problem: PlanningProblem, space: PlanSpace, objective: Objective,
    config: AnnealConfig = DEFAULT_CONFIG, on_evaluation: OnEvaluation | None = None,
) -> SearchResult:
    """Re-anneal from ``from_plan`` for ``new_workload`` (same model, SLO, router and engine as ``problem``)."""
    evaluator = FleetEvaluator(problem.model_copy(update={"workload": new_workload}), space)
    return reanneal(from_plan, space, evaluator, objective, config, on_evaluation=on_evaluation)
