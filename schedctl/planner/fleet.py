"""Scoring a plan by simulation: route the workload over the fleet's replicas, simulate each, check the SLO.

Replicas are independent engines (no shared cache, no migration). A router sends every request to one replica:

* ``round-robin``: smooth weighted round robin (nginx's rule: deterministic, each replica's share of requests is
  its weight's share, spread evenly in time);
* ``prefix-affinity``: weighted rendezvous hashing of the prompt's first ``affinity_prefix_tokens`` tokens, so
  prompts that share that prefix land on the same replica and reuse its prefix cache, with bounded loads: a
  replica past ``affinity_load_bound`` × its fair share passes the request to the prefix's next-ranked replica.

Weights: in a homogeneous fleet every replica weighs 1; in a mixed fleet a replica weighs its GPU type's
capacity, measured once per (GPU type, policy) as the throughput of that GPU serving the workload's first
``capacity_probe_requests`` requests all at once.

Each replica's requests are simulated to completion (``sim.run.simulate``); the SLO is checked on all records
together (see ``objective.py`` for the definitions). Everything is deterministic: the workload is generated once
from its seed, hashing is blake2b (not Python's per-process ``hash``), so the same plan always gets the same score.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schedctl.planner.objective import SLO, PlanScore, violation
from schedctl.planner.space import Plan, PlanSpace
from schedctl.policies.spec import PolicySpec
from schedctl.sim.engine import EngineConfig
from schedctl.sim.profiles import GPUProfile, ModelProfile
from schedctl.sim.records import UPPER_S
from schedctl.sim.run import Hardware, simulate
from schedctl.stats import histogram_quantile
from schedctl.workloads.registry import WorkloadConfig
from schedctl.workloads.types import Request

Router = Literal["round-robin", "prefix-affinity"]


class PlanningProblem(BaseModel):
    """What a plan is scored against: the workload, the model served, the SLO, and how replicas are fed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workload: WorkloadConfig
    model: ModelProfile
    slo: SLO
    router: Router = "prefix-affinity"
    engine: EngineConfig = EngineConfig()
    affinity_prefix_tokens: int = Field(256, ge=1, description="prompt tokens the prefix-affinity router hashes")
    affinity_load_bound: float = Field(1.25, ge=1, description="prefix-affinity: a replica's load cap / fair share")
    capacity_probe_requests: int = Field(256, ge=1, description="requests of the capacity probe (mixed fleets)")


# -- routing -------------------------------------------------------------------------------------------------------


def round_robin(n_requests: int, weights: Sequence[float]) -> list[int]:
    """Smooth weighted round robin: the replica index of each of ``n_requests`` requests, in arrival order."""
    w = np.asarray(weights, dtype=float)
    current = np.zeros_like(w)
    total = float(w.sum())
    out = []
    for _ in range(n_requests):
        current += w
        pick = int(np.argmax(current))  # ties: the lowest index
        current[pick] -= total
        out.append(pick)
    return out


def _unit_hash(data: bytes) -> float:
    """A deterministic hash of ``data`` mapped into (0, 1)."""
    h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
    return (h + 0.5) / 2.0**64


def prefix_affinity(
    requests: Sequence[Request], replica_ids: Sequence[str], weights: Sequence[float], prefix_tokens: int,
    load_bound: float = 1.25,
) -> list[int]:
    """Weighted rendezvous hashing with bounded loads: the replica index of each request, in arrival order.

    Replica j's score for a prompt prefix is ``-w_j / ln(u_j)``, ``u_j`` a hash of (prefix, replica id) in (0, 1):
    ranking replicas by it gives replica j a share w_j / sum(w) of the prefixes, and adding a replica moves only
    the prefixes it now wins. A request goes to the best-ranked replica for its prefix whose load stays within
    ``load_bound`` × its fair share (requests so far × w_j / sum(w), rounded up), so one popular prefix cannot swamp one
    replica (consistent hashing with bounded loads, as cache-aware routers do); ``inf`` turns the bound off.
    """
    ids = [r.encode() for r in replica_ids]
    w = np.asarray(weights, dtype=float)
    share = w / w.sum()
    load = np.zeros(len(ids))
    ranking: dict[bytes, list[int]] = {}
    out = []
    for n, req in enumerate(requests, start=1):
        key = req.prompt[:prefix_tokens].tobytes()
        order = ranking.get(key)
        if order is None:
            u = np.array([_unit_hash(key + b"|" + rid) for rid in ids])
            order = ranking[key] = np.argsort(w / np.log(u), kind="stable").tolist()  # best (highest score) first
        cap = np.ceil(load_bound * n * share)
        pick = next((j for j in order if load[j] + 1 <= cap[j]), None)
        if pick is None:  # every replica is at its cap (uneven weights): the least loaded for its share
            pick = int(np.argmin(load / share))
        load[pick] += 1
        out.append(pick)
    return out


# -- evaluation ----------------------------------------------------------------------------------------------------


class FleetEvaluator:
    """Scores plans of ``space`` by simulation against ``problem``; memoised by plan. Call it with a Plan.

    ``simulations`` counts replica simulations (for reports); the workload is generated once, here.
    """

    def __init__(self, problem: PlanningProblem, space: PlanSpace) -> None:
        self.problem = problem
        self.space = space
        self.requests: list[Request] = list(problem.workload.requests())
        if not self.requests:
            raise ValueError("the workload produced no requests")
        self._gpus: dict[str, GPUProfile] = {o.key: o.gpu for o in space.offerings}
        self._scores: dict[Plan, PlanScore] = {}
        self._capacity: dict[tuple[str, str], float] = {}
        self.simulations = 0

    def __call__(self, plan: Plan) -> PlanScore:
        score = self._scores.get(plan)
        if score is None:
            score = self._scores[plan] = self._score(plan)
        return score

    def hardware(self, gpu_key: str) -> Hardware:
        return Hardware(gpu=self._gpus[gpu_key], model=self.problem.model)

    def capacity_rps(self, gpu_key: str, policy: PolicySpec) -> float:
        """Throughput of one replica serving the probe requests all at once (its weight in a mixed fleet)."""
        key = (gpu_key, policy.model_dump_json())
        if key not in self._capacity:
            probe = [replace(r, arrival_s=0.0) for r in self.requests[: self.problem.capacity_probe_requests]]
            _engine, summary = simulate(probe, policy, self.hardware(gpu_key), self.problem.engine)
            self.simulations += 1
            self._capacity[key] = max(summary.throughput_rps, 1e-9)
        return self._capacity[key]

    def route(self, plan: Plan) -> tuple[list[str], list[list[Request]]]:
        """The fleet's replicas (GPU type of each) and the requests each one serves."""
        self.space.check(plan)
        gpus = [gpu for gpu, n in plan.replicas.items() for _ in range(n)]
        mixed = len(plan.replicas) > 1
        weights = [self.capacity_rps(g, plan.policy) if mixed else 1.0 for g in gpus]
        if self.problem.router == "round-robin":
            picks = round_robin(len(self.requests), weights)
        else:
            replica_ids = [f"{g}#{i}" for i, g in enumerate(gpus)]
            picks = prefix_affinity(self.requests, replica_ids, weights, self.problem.affinity_prefix_tokens,
                                    self.problem.affinity_load_bound)
        shares: list[list[Request]] = [[] for _ in gpus]
        for req, j in zip(self.requests, picks, strict=True):
            shares[j].append(req)
        return gpus, shares

    def _score(self, plan: Plan) -> PlanScore:
        slo = self.problem.slo
        gpus, shares = self.route(plan)
        ttft: list[np.ndarray] = []
        tpot: list[np.ndarray] = []
        tbt_counts = np.zeros(len(UPPER_S))
        aborted = 0
        for gpu, reqs in zip(gpus, shares, strict=True):
            if not reqs:
                continue
            engine, _summary = simulate(reqs, plan.policy, self.hardware(gpu), self.problem.engine)
            self.simulations += 1
            log = engine.completed
            first, finish = log.column("first_token_s"), log.column("finish_s")
            gaps = np.maximum(log.column("output_tokens") - 1, 1)
            ttft.append(first - log.column("arrival_s"))
            tpot.append((finish - first) / gaps)
            engine.tbt.flush()
            tbt_counts += engine.tbt.counts
            aborted += len(engine.aborted)
        n = len(self.requests)
        all_ttft = np.concatenate(ttft) if ttft else np.zeros(0)
        all_tpot = np.concatenate(tpot) if tpot else np.zeros(0)
        met = int(np.count_nonzero((all_ttft <= slo.ttft_s) & (all_tpot <= slo.tbt_s)))
        attainment = met / n
        gaps_total = float(tbt_counts.sum())
        # a bucket whose upper edge passes the target counts as over it (conservative by at most 1%)
        over = float(tbt_counts[slo.tbt_s < UPPER_S].sum()) / gaps_total if gaps_total > 0 else 0.0
        q = slo.attainment
        # TTFT quantile over all requests, the aborted ones counted as never served
        padded = np.concatenate([all_ttft, np.full(n - all_ttft.size, math.inf)])
        ttft_q = float(np.quantile(padded, q, method="higher"))
        return PlanScore(
            plan=plan, cost_usd_per_hour=self.space.cost_usd_per_hour(plan), attainment=attainment,
            tbt_over_share=over, violation=violation(slo, attainment, over), ttft_q_s=ttft_q,
            tbt_q_s=histogram_quantile(UPPER_S, tbt_counts, q) if gaps_total > 0 else math.nan,
            requests=n, aborted=aborted,
        )
