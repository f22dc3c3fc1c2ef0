"""`schedctl bench optimality`: FCFS, LPM, k-LPM and the adaptive controller's choice against the exact optimum.

Instances (``bench/instances.py``), ``n_queries`` each, seeded:

* ``rasq`` — the k-LPM paper's generative model (regular arrival, shuffled queue): 4 groups × n/4 queries,
  a 1024-token shared prefix per group and 64 unique tokens per query, arrivals every 30% of a cold prefill
  (the queue builds up);
* ``tree@1.5`` and ``tree@10`` — random shared-prefix instances (6 prefix nodes of 64..512 tokens, 16..128
  unique tokens), released over a span that offers 1.5× and 10× the work a server does cold.

Under the paper's cost model (``oracle.ServerModel``, both caches) and two objectives: the largest TTFT, and the
number of late queries (TTFT above the instance's SLO, which is FCFS's median TTFT on it, as in
``benchmarks/oracle_speed.py``). Every policy's value is divided by the exact optimum (``oracle.solve``).

"The adaptive controller's choice". The controller cannot learn inside one 12-query instance, so it is measured
as what it would exploit after learning from the same generative model — with its own learner, not a shortcut:

* a ``KTuner`` (controller/ktuner.py, the settings' arms and learner) plays a stream of ``train`` training
  instances (seeds disjoint from the held-out ones). Each instance is one window: the tuner selects an arm from
  the previous window's observation, the instance is served under that k, and the window's reward is the
  controller's objective (``objective.evaluate``) on the instance's TTFTs with the instance's SLO as target —
  for the late count the attainment alone (reward = 1 − late / n), for the max TTFT the tail score of the
  largest TTFT (``tail_quantile`` → 1);
* the trained tuner is then frozen and, on each held-out instance, plays the arm it would exploit
  (``best_arm`` in the load context of the previous window): the ``adaptive`` row;
* ``adaptive+whatif`` is the same with the what-if prior (controller/whatif.py, ``mode = "prior"``): during
  training each window is also replayed under every arm from the same start (here exactly: the instance under
  each k) and the counterfactual rewards are credited through ``WhatIf.learn``, as the sidecar does;
* ``best k (hindsight)`` is, per instance, the best of the tuner's arms: the ceiling of any choice of k.

Ratios: policy / optimum (1 when both are 0). When only the optimum is 0 (a late count the optimum brings to
zero) the ratio is infinite: such instances are counted in ``unbounded`` and left out of the mean and worst.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from schedctl.bench.instances import Query, random_prefix_tree, regular_arrival_shuffled_queue
from schedctl.bench.oracle import (
    CacheKind,
    LateCount,
    MaxTTFT,
    Objective,
    ServerModel,
    policy_order,
    schedule,
    solve,
)
from schedctl.bench.oracle import evaluate as oracle_value
from schedctl.controller.ktuner import KTuner, KTunerParams, arm_label
from schedctl.controller.objective import ObjectiveParams, evaluate
from schedctl.controller.whatif import WhatIf, WhatIfParams
from schedctl.engine_adapter.base import Counterfactual, Observation, ReplayReport
from schedctl.policies.arms import ArmValue
from schedctl.policies.spec import KValue
from schedctl.stats import LatencyDist

FAMILIES = ("rasq", "tree@1.5", "tree@10")
PAPER_FAMILY = "rasq"  # the paper's generative model: where the 1.10x target applies
OBJECTIVES = ("max_ttft", "late_count")
CACHES: tuple[CacheKind, ...] = ("radix", "last_prompt")
STATIC_KS: tuple[KValue, ...] = (1, 2, 3, 4, 8, "inf")
ADAPTIVE, ADAPTIVE_WHATIF, HINDSIGHT = "adaptive", "adaptive+whatif", "best k (hindsight)"
TARGET_MEAN_RATIO = 1.10
TRAIN_SEED_BASE = 1_000_000  # training instances never share a seed with held-out ones
_MAX_QUANTILE = 1.0 - 1e-9  # the objective's tail quantile that is the largest TTFT


def instances(family: str, n_queries: int, seed: int, model: ServerModel) -> list[Query]:
    if family == "rasq":
        groups = 4 if n_queries % 4 == 0 else 2
        u, d = 1024, 64
        return regular_arrival_shuffled_queue(groups, max(1, n_queries // groups), u, d,
                                              0.3 * model.prefill_s(u + d, 0), seed)
    if family.startswith("tree@"):
        load = float(family.split("@", 1)[1])
        return random_prefix_tree(n_queries, seed, prefix_nodes=6, segment_tokens=(64, 512),
                                  unique_tokens=(16, 128), arrival_span_s=n_queries * 0.05 / load)
    raise ValueError(f"unknown instance family {family!r} (known: {', '.join(FAMILIES)})")


def instance_slo_s(queries: Sequence[Query], model: ServerModel) -> float:
    """The instance's TTFT SLO: FCFS's median TTFT on it."""
    return statistics.median(schedule(queries, policy_order(queries, model, 1), model).ttft_s)


def objective_for(kind: str, slo_s: float) -> Objective:
    return MaxTTFT() if kind == "max_ttft" else LateCount(ttft_bound_s=slo_s)


def reward_params(kind: str, slo_s: float) -> ObjectiveParams:
    """The controller's objective, pointed at the instance's objective (every window is evidence)."""
    common: dict[str, Any] = {"ttft_target_s": slo_s, "min_samples": 1, "idle_queue_len": -1,
                              "count_oldest_waiting": False}
    if kind == "late_count":
        return ObjectiveParams(attainment_weight=1.0, **common)
    return ObjectiveParams(attainment_weight=0.0, tail_quantile=_MAX_QUANTILE, **common)


def window(queries: Sequence[Query], k: ArmValue, model: ServerModel, start_s: float) -> Observation:
    """The instance served under k-LPM, as one observation window starting at ``start_s``."""
    if not (isinstance(k, int) or k == "inf"):
        raise ValueError(f"the small-instance model orders by k-LPM only, not {k!r}: give the tuner k arms")
    order = policy_order(queries, model, None if k == "inf" else int(k))
    s = schedule(queries, order, model)
    t0 = min(q.arrival_s for q in queries)
    span_s = max(max(s.completion_s) - t0, 1e-9)
    prompt = sum(len(q.tokens) for q in queries)
    return Observation(start_s=start_s, end_s=start_s + span_s, arrivals=len(queries), completions=len(queries),
                       ttft=LatencyDist(samples_s=list(s.ttft_s)), queue_len=0, oldest_wait_s=0.0,
                       cache_hit_rate=min(1.0, sum(s.cached_tokens) / prompt) if prompt else None)


class Learner:
    """A KTuner that learns from instance windows (with or without the what-if prior), then plays frozen."""

    def __init__(self, params: KTunerParams, kind: str, model: ServerModel, whatif: bool) -> None:
        self.tuner = KTuner(params)
        self.kind, self.model, self.whatif = kind, model, whatif
        self.clock_s = 0.0
        self.last: Observation | None = None

    def _context_obs(self) -> Observation:
        return self.last if self.last is not None else Observation(start_s=-1.0, end_s=0.0, arrivals=0,
                                                                    completions=0)

    def train(self, queries: Sequence[Query]) -> ArmValue:
        kt = self.tuner
        arm = kt.select(self._context_obs()).arm
        slo_s = instance_slo_s(queries, self.model)
        params = reward_params(self.kind, slo_s)
        live = window(queries, arm, self.model, self.clock_s)
        if self.whatif:
            results = [Counterfactual(arm=a, observation=live if a == arm else window(queries, a, self.model,
                                                                                       self.clock_s))
                       for a in kt.arms]
            report = ReplayReport(start_s=live.start_s, end_s=live.end_s, windows=1, results=results)
            wi = WhatIf(WhatIfParams(enabled=True, mode="prior"), params, kt.params.estimate_weight)
            record = wi.score(report)
            if wi.replaces_live(record, arm):
                wi.learn(record, report, kt, live, arm, None)
            else:
                self._credit_live(arm, live, params)
        else:
            self._credit_live(arm, live, params)
        self.clock_s = live.end_s
        self.last = live
        return arm

    def _credit_live(self, arm: ArmValue, live: Observation, params: ObjectiveParams) -> None:
        reward = evaluate(live, params).reward
        if reward is not None:
            self.tuner.update(arm, reward, live)

    def choose(self) -> ArmValue:
        """The arm the frozen tuner exploits in the load context of the last window."""
        kt = self.tuner
        label = kt.context_label(self._context_obs())
        best = kt.best_arm(label)
        if best is None:  # a context never trained in: the context it learned most in
            counts = {lab: sum(s.count for s in arms.values()) for lab, arms in kt.stats.items()}
            best = kt.best_arm(max(counts, key=counts.__getitem__)) if counts else kt.arms[0]
        assert best is not None
        return best

    def play(self, queries: Sequence[Query]) -> ArmValue:
        arm = self.choose()
        live = window(queries, arm, self.model, self.clock_s)
        self.clock_s, self.last = live.end_s, live
        return arm


class CellJob(BaseModel):
    """One family × cache × objective (picklable: goes to a worker process)."""

    model_config = ConfigDict(frozen=True)

    family: str
    cache: CacheKind
    objective: str
    n_queries: int = 12
    instances: int = 30
    train: int = 60
    tuner: KTunerParams = KTunerParams()
    node_limit: int | None = 2_000_000


class CellResult(BaseModel):
    family: str
    cache: str
    objective: str
    ratios: dict[str, list[float]]  # policy -> ratio per held-out instance
    choices: dict[str, dict[str, int]]  # adaptive rows -> arm label -> held-out instances it was played on


def _ratio(value: float, optimum: float) -> float:
    if optimum == 0:
        return 1.0 if value == 0 else math.inf
    return value / optimum


def run_cell(job: CellJob) -> CellResult:
    model = ServerModel(cache=job.cache)
    learners = {ADAPTIVE: Learner(job.tuner, job.objective, model, whatif=False),
                ADAPTIVE_WHATIF: Learner(job.tuner, job.objective, model, whatif=True)}
    for i in range(job.train):
        queries = instances(job.family, job.n_queries, TRAIN_SEED_BASE + i, model)
        for learner in learners.values():
            learner.train(queries)
    ratios: dict[str, list[float]] = {}
    choices: dict[str, Counter[str]] = {name: Counter() for name in learners}
    for seed in range(job.instances):
        queries = instances(job.family, job.n_queries, seed, model)
        objective = objective_for(job.objective, instance_slo_s(queries, model))
        optimum = solve(queries, model, objective, node_limit=job.node_limit).value

        def value(k: ArmValue, queries: list[Query] = queries, objective: Objective = objective) -> float:
            order = policy_order(queries, model, None if k == "inf" else int(k))
            return oracle_value(queries, order, model, objective)

        values = {k: value(k) for k in dict.fromkeys([*STATIC_KS, *job.tuner.arms])}
        for k in STATIC_KS:
            ratios.setdefault(arm_label(k), []).append(_ratio(values[k], optimum))
        for name, learner in learners.items():
            arm = learner.play(queries)
            choices[name][arm_label(arm)] += 1
            ratios.setdefault(name, []).append(_ratio(values[arm], optimum))
        ratios.setdefault(HINDSIGHT, []).append(_ratio(min(values[k] for k in job.tuner.arms), optimum))
    return CellResult(family=job.family, cache=job.cache, objective=job.objective, ratios=ratios,
                      choices={name: dict(c) for name, c in choices.items()})


class OptimalityRow(BaseModel):
    """One family × cache × objective × policy. The JSON that `schedctl bench optimality --json` prints."""

    family: str
    cache: str
    objective: str
    policy: str
    mean_ratio: float  # over the held-out instances with a finite ratio
    worst_ratio: float  # the largest finite ratio
    instances: int
    unbounded: int = 0  # instances with optimum 0 and the policy above it
    choices: dict[str, int] = {}  # adaptive rows: arm label -> instances it was played on


def summarize(results: Sequence[CellResult]) -> list[OptimalityRow]:
    rows = []
    for r in results:
        for policy, values in r.ratios.items():
            arr = np.asarray(values, dtype=float)
            finite = arr[np.isfinite(arr)]
            rows.append(OptimalityRow(
                family=r.family, cache=r.cache, objective=r.objective, policy=policy,
                mean_ratio=float(finite.mean()) if finite.size else math.inf,
                worst_ratio=float(finite.max()) if finite.size else math.inf, instances=int(arr.size),
                unbounded=int(arr.size - finite.size), choices=r.choices.get(policy, {}),
            ))
    return rows


def target_cells(rows: Sequence[OptimalityRow]) -> list[tuple[OptimalityRow, bool]]:
    """The adaptive rows on the paper's generative model, each with whether its mean ratio is within 1.10x."""
    return [(r, r.mean_ratio <= TARGET_MEAN_RATIO and r.unbounded == 0) for r in rows
            if r.family == PAPER_FAMILY and r.policy == ADAPTIVE]


def jobs_for(families: Sequence[str], caches: Sequence[CacheKind], objectives: Sequence[str], n_queries: int,
             count: int, train: int, tuner: KTunerParams) -> list[CellJob]:
    return [CellJob(family=f, cache=c, objective=o, n_queries=n_queries, instances=count, train=train, tuner=tuner)
            for f in families for o in objectives for c in caches]


def plot(rows: Sequence[OptimalityRow], path: Any) -> None:
    """A grid (family × objective-and-cache): mean ratio per policy as bars, worst ratio as a black tick."""
    from schedctl.bench.plots import _pyplot, save

    plt = _pyplot()
    families = list(dict.fromkeys(r.family for r in rows))
    cells = list(dict.fromkeys((r.objective, r.cache) for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    fig, axes = plt.subplots(len(families), len(cells), figsize=(3.6 * len(cells), 3.8 * len(families)),
                             squeeze=False, sharey=True)
    fig.subplots_adjust(hspace=0.75)
    by = {(r.family, r.objective, r.cache, r.policy): r for r in rows}
    for i, fam in enumerate(families):
        for j, (obj, cache) in enumerate(cells):
            ax = axes[i][j]
            got = [by.get((fam, obj, cache, p)) for p in policies]
            means = [min(g.mean_ratio, 3.0) if g else math.nan for g in got]
            worst = [min(g.worst_ratio, 3.0) if g else math.nan for g in got]
            x = np.arange(len(policies))
            ax.bar(x, means, color=["tab:green" if p.startswith(ADAPTIVE) else "tab:gray" for p in policies])
            ax.plot(x, worst, "k_", markersize=10)
            ax.axhline(TARGET_MEAN_RATIO, color="tab:red", lw=0.8, ls="--")
            ax.set_xticks(x, policies, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{fam} · {obj} · {cache}", fontsize=8)
            ax.set_ylim(0.9, 3.05)
            if j == 0:
                ax.set_ylabel("policy / optimum")
    save(fig, path)
