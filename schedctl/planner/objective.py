"""What a plan is worth: the SLO, a plan's score, the objective that joins cost and SLO, and a search's result.

The SLO (:class:`SLO`): a TTFT target, a TBT target and the share of traffic that must meet them (``attainment``,
e.g. 0.99). The simulator records every request's TTFT but not every gap between its tokens (those go to a
histogram), so the SLO has two parts, both read at the same share ``q = attainment``:

* per request: a request *meets its targets* when its TTFT <= ``ttft_s`` and its mean time between tokens
  (``(finish - first token) / (output tokens - 1)``) <= ``tbt_s``; the plan's *attainment* is the share of
  requests that do (a request the engine aborted does not). Part one holds when attainment >= q.
* per token gap: part two holds when the share of all gaps between tokens longer than ``tbt_s`` is at most
  ``1 - q`` — the fleet's TBT quantile q is within the target (read at the histogram's 1% resolution).

A plan's *violation* is how far it misses, in shares: ``max(0, q - attainment) + max(0, gaps over - (1 - q))``;
it is feasible when the violation is 0.

Objective (:class:`Objective`): energy = cost per hour + λ × SLO penalty, in $/h. ``mode="constraint"``
(default) treats the SLO as a hard constraint: the penalty is the violation, and the *best* plan is the cheapest
feasible one — any feasible plan ranks above any infeasible one, and infeasible plans rank by violation (the
*closest* plan). ``mode="penalty"`` is the soft form: the penalty is the share of requests outside the targets
plus the share of token gaps over the TBT target, and the best plan is the one with the least energy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schedctl.planner.space import Plan


class SLO(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_s: float = Field(gt=0, allow_inf_nan=False, description="time to first token target, seconds")
    tbt_s: float = Field(gt=0, allow_inf_nan=False, description="time between tokens target, seconds")
    attainment: float = Field(0.99, gt=0, le=1, description="share of requests (and of token gaps) within target")


class PlanScore(BaseModel):
    """One evaluated plan: its cost and how its simulated traffic met the SLO."""

    model_config = ConfigDict(frozen=True)

    plan: Plan
    cost_usd_per_hour: float
    attainment: float  # share of requests meeting the TTFT and mean-TBT targets
    tbt_over_share: float  # share of token gaps longer than the TBT target
    violation: float  # SLO shortfall in shares (0: the SLO is met)
    ttft_q_s: float = math.nan  # TTFT at the SLO quantile, all replicas together
    tbt_q_s: float = math.nan  # time between tokens at the SLO quantile
    requests: int = 0
    aborted: int = 0

    @property
    def feasible(self) -> bool:
        return self.violation <= 0


def violation(slo: SLO, attainment: float, tbt_over_share: float) -> float:
    return max(0.0, slo.attainment - attainment) + max(0.0, tbt_over_share - (1.0 - slo.attainment))


class Objective(BaseModel):
    """energy = cost + λ × penalty; the ranking that picks the best plan. See the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["constraint", "penalty"] = "constraint"
    penalty_usd_per_hour: float = Field(gt=0, allow_inf_nan=False, description="λ: $/h per unit share of penalty")

    @staticmethod
    def default_penalty_usd_per_hour(max_price_usd_per_hour: float) -> float:
        """λ at which missing the SLO by 1 point of share costs as much as one replica of the dearest GPU."""
        return 100.0 * max(max_price_usd_per_hour, 1e-6)

    def penalty(self, score: PlanScore) -> float:
        if self.mode == "constraint":
            return score.violation
        return (1.0 - score.attainment) + score.tbt_over_share

    def energy(self, score: PlanScore) -> float:
        return score.cost_usd_per_hour + self.penalty_usd_per_hour * self.penalty(score)

    def could_beat(self, cost_usd_per_hour: float, best: PlanScore) -> bool:
        """Whether a plan of this cost could rank above ``best``, whatever its SLO figures."""
        if self.mode == "penalty":
            return cost_usd_per_hour < self.energy(best)
        return not best.feasible or cost_usd_per_hour <= best.cost_usd_per_hour

    def rank(self, score: PlanScore) -> tuple[float, float, float, str]:
        """Sort key, smaller is better; the plan's label breaks the last ties so the best plan is unique."""
        label = score.plan.label()
        if self.mode == "penalty":
            return (self.energy(score), score.cost_usd_per_hour, -score.attainment, label)
        if score.feasible:
            return (0.0, score.cost_usd_per_hour, -score.attainment, label)
        return (1.0, score.violation, score.cost_usd_per_hour, label)


class SearchResult(BaseModel):
    """What a search found. ``visited`` holds every plan it evaluated, in evaluation order."""

    method: str
    objective: Objective
    best: PlanScore  # the best plan; when no visited plan is feasible, the closest one
    feasible: bool  # whether ``best`` meets the SLO
    runners_up: list[PlanScore]  # the next best fleets, one plan each
    visited: list[PlanScore]
    evaluations: int  # distinct plans simulated
    evaluations_to_best: int  # evaluations made when ``best`` was first evaluated
    evaluations_to_feasible: int | None  # ... when the first feasible plan was, None if none
    steps: int = 0  # proposals made (the annealer's; memoised ones cost no evaluation)
    reheats: int = 0
    stopped: str = ""  # why the search ended

    @property
    def best_energy(self) -> float:
        return self.objective.energy(self.best)


def search_result(
    method: str, objective: Objective, visited: Sequence[PlanScore], runners_up: int = 5, **extra: object
) -> SearchResult:
    """Rank the visited plans: the best; the runners-up, the next best fleets (each under its best policy: the same
    fleet under another policy is no alternative to show an operator); when the best and a feasible plan appeared."""
    if not visited:
        raise ValueError("a search must evaluate at least one plan")
    order = sorted(range(len(visited)), key=lambda i: objective.rank(visited[i]))
    best = visited[order[0]]
    first_feasible = next((i + 1 for i, s in enumerate(visited) if s.feasible), None)
    fleets = {tuple(best.plan.replicas.items())}
    others: list[PlanScore] = []
    for i in order[1:]:
        fleet = tuple(visited[i].plan.replicas.items())
        if len(others) < runners_up and fleet not in fleets:
            fleets.add(fleet)
            others.append(visited[i])
    return SearchResult(
        method=method, objective=objective, best=best, feasible=best.feasible, runners_up=others,
        visited=list(visited),
        evaluations=len(visited), evaluations_to_best=order[0] + 1, evaluations_to_feasible=first_feasible,
        **extra,
    )
