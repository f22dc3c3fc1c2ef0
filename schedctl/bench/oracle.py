"""The exact optimum of query scheduling with prefix reuse, for small instances (issue 7, part 1).

The model is the one of the k-LPM paper's analysis (Dexter et al. 2025, REFERENCES.md §1):

* Queries (``instances.Query``) have a release time and prompt tokens. One query is processed at a time, to
  completion (no preemption); an idle server waits for the next release.
* Processing a prompt of p tokens whose first c tokens are cached takes (:meth:`ServerModel.prefill_s`)
  ``a·(p−c) + b·(p²−c²)/2 + const``: a linear (FFN) cost per new token plus attention's cost of each new token
  against its context, which is the sum over the new positions i = c..p−1 of (i + 1/2).
* Cache ``"last_prompt"``: only the most recently processed prompt is cached (match = its longest common prefix
  with the new prompt). Cache ``"radix"``: a radix tree of every prompt processed so far, never evicted
  (match = the longest common prefix with any processed prompt); ``policies.radix.RadixTree``.
* TTFT of a query = its completion time − its release time. Objectives: :class:`MaxTTFT` (the largest TTFT)
  and :class:`LateCount` (how many queries have TTFT > ``ttft_bound_s``); smaller is better for both.

What "optimal" ranges over (the idling question). A schedule is an order plus start times. The cache content
when a query starts depends only on which prompts came before it, not on when, so a fixed order fixes every
processing time, and every completion time is non-decreasing in every start time: starting each query as soon
as the previous one is done and it is released (the order's *semi-active* timing) is never worse than any
timing with extra idle time, for both objectives. So the optimum over all schedules is the optimum over all n!
orders, each with its semi-active timing: that is what :func:`solve` and :func:`brute_force` compute.

That set includes orders that keep the server idle while a query waits, to serve first a query not yet
released. Online work-conserving policies (FCFS, LPM, k-LPM) never do. Whether such deliberate idling helps:

* max TTFT, last-prompt cache: it can, strictly. Waiting a moment for a query that reuses the cached prompt can
  beat evicting that prompt for a query that has just arrived (``tests/test_oracle.py`` has a worked instance).
* max TTFT, radix cache: it cannot; some work-conserving order is optimal. Exchange argument: if the server
  idles at τ while queries wait, move the earliest-released waiting query i into that slot. Work under this
  cache is a coverage function of the set of prompts processed (each prefix-tree token is computed once, at a
  cost that depends on its depth), hence monotone and submodular; so i now completes no later than before, every
  query that moved past it completes no later than i used to (and was released no earlier than i), and the rest
  is unchanged. Without any reuse this is FCFS's optimality.
* late count: it can, even without reuse (holding the server for a query that can still make the bound).

``brute_force(..., work_conserving=True)`` gives the best work-conserving order of a tiny instance, to measure
that gap. The optimum is a lower bound for every policy either way.

The exact solver is a depth-first branch and bound over orders with dominance between partial schedules that
leave the cache in the same state (see :class:`_Search`); ``benchmarks/oracle_speed.py`` prints its times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schedctl.bench.instances import Query
from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.radix import RadixNode, RadixTree, Tokens, common_prefix_len
from schedctl.policies.spec import PolicySpec, queue_k
from schedctl.tokens import as_tokens

CacheKind = Literal["last_prompt", "radix"]


class ServerModel(BaseModel):
    """The cost and cache model. Defaults: a Llama-3.1-8B-like ratio of attention to FFN cost at ~10k tokens/s."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    per_token_s: float = Field(1e-4, ge=0, description="a: linear cost of each uncached token")
    per_token_pair_s: float = Field(3.3e-9, ge=0, description="b: attention cost of a new token per context token")
    per_query_s: float = Field(0.0, ge=0, description="const: fixed cost of every query, even fully cached")
    cache: CacheKind = "radix"

    def prefill_s(self, prompt_tokens: int, cached_tokens: int) -> float:
        """Processing time of a prompt of ``prompt_tokens`` tokens of which the first ``cached_tokens`` are cached."""
        if not 0 <= cached_tokens <= prompt_tokens:
            raise ValueError(f"need 0 <= cached_tokens <= prompt_tokens, got {cached_tokens}, {prompt_tokens}")
        p, c = prompt_tokens, cached_tokens
        return self.per_token_s * (p - c) + self.per_token_pair_s * (p * p - c * c) / 2 + self.per_query_s


class MaxTTFT(BaseModel):
    """The largest TTFT of the instance, in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["max_ttft"] = "max_ttft"

    def add(self, acc: float, ttft_s: float) -> float:
        return max(acc, ttft_s)


class LateCount(BaseModel):
    """How many queries have a TTFT strictly over ``ttft_bound_s``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["late_count"] = "late_count"
    ttft_bound_s: float

    def add(self, acc: float, ttft_s: float) -> float:
        return acc + 1.0 if ttft_s > self.ttft_bound_s else acc


Objective = Annotated[MaxTTFT | LateCount, Field(discriminator="kind")]


# -- the two caches (also the PrefixOracle the k-LPM queue reads) ------------------------------------------------
class LastPromptCache:
    """Holds the most recently processed prompt only."""

    def __init__(self) -> None:
        self.last = as_tokens(())

    def match_len(self, tokens: Tokens) -> int:
        return common_prefix_len(as_tokens(tokens), 0, self.last)

    def insert(self, tokens: Tokens) -> int:
        """Process ``tokens``: they replace the cached prompt. Returns how many were cached before."""
        tokens = as_tokens(tokens)
        matched = common_prefix_len(tokens, 0, self.last)
        self.last = tokens
        return matched


class RadixCache:
    """Every processed prompt, in a radix tree, never evicted."""

    def __init__(self) -> None:
        self.tree: RadixTree[RadixNode] = RadixTree(RadixNode)

    def match_len(self, tokens: Tokens) -> int:
        return self.tree.match_len(tokens)

    def insert(self, tokens: Tokens) -> int:
        _node, matched, _new = self.tree.insert(tokens)
        return matched


def make_cache(kind: CacheKind) -> LastPromptCache | RadixCache:
    return LastPromptCache() if kind == "last_prompt" else RadixCache()


# -- evaluating an order -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """The semi-active schedule of an order. Per-query tuples are indexed by query, not by position."""

    order: tuple[int, ...]
    start_s: tuple[float, ...]
    completion_s: tuple[float, ...]
    cached_tokens: tuple[int, ...]
    ttft_s: tuple[float, ...]
    work_conserving: bool  # the server never idles while a released query waits


def schedule(queries: Sequence[Query], order: Sequence[int], model: ServerModel) -> Schedule:
    """Run ``order`` under the model: each query starts when the previous one is done and it is released."""
    n = len(queries)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1}, got {list(order)}")
    cache = make_cache(model.cache)
    start, done, cached = [0.0] * n, [0.0] * n, [0] * n
    later_release = [math.inf] * (n + 1)  # the earliest release among order[pos:]
    for pos in range(n - 1, -1, -1):
        later_release[pos] = min(later_release[pos + 1], queries[order[pos]].arrival_s)
    t = -math.inf
    wc = True
    for pos, j in enumerate(order):
        q = queries[j]
        # work-conserving: j was waiting when the server freed up, or nothing was and j is among the next released
        wc = wc and q.arrival_s <= max(t, later_release[pos])
        start[j] = max(t, q.arrival_s)
        cached[j] = cache.insert(q.tokens)
        t = done[j] = start[j] + model.prefill_s(len(q.tokens), cached[j])
    ttft = tuple(done[j] - queries[j].arrival_s for j in range(n))
    return Schedule(tuple(order), tuple(start), tuple(done), tuple(cached), ttft, wc)


def objective_value(ttft_s: Sequence[float], objective: Objective) -> float:
    acc = 0.0
    for x in ttft_s:
        acc = objective.add(acc, x)
    return acc


def evaluate(queries: Sequence[Query], order: Sequence[int], model: ServerModel, objective: Objective) -> float:
    """The objective's value for ``order`` (semi-active timing)."""
    return objective_value(schedule(queries, order, model).ttft_s, objective)


# -- what an online policy does under the model ------------------------------------------------------------------
def policy_order(queries: Sequence[Query], model: ServerModel, k: int | None) -> tuple[int, ...]:
    """The order k-LPM (k=1: FCFS, None: LPM) produces online: whenever the server is free it picks among the
    released waiting queries with ``policies.klpm.KLPMQueue``, which reads the model's cache as its prefix oracle.
    Age = release order (ties: lower index first)."""
    n = len(queries)
    cache = make_cache(model.cache)
    queue: KLPMQueue[int] = KLPMQueue(k, oracle=cache)
    by_release = sorted(range(n), key=lambda j: (queries[j].arrival_s, j))
    order: list[int] = []
    t, nxt = -math.inf, 0
    while len(order) < n:
        if not queue:
            t = max(t, queries[by_release[nxt]].arrival_s)
        while nxt < n and queries[by_release[nxt]].arrival_s <= t:
            j = by_release[nxt]
            queue.push(j, seq=nxt, tokens=queries[j].tokens)
            nxt += 1
        j = queue.pop()
        tokens = queries[j].tokens
        matched = cache.insert(tokens)  # last_prompt: the old prompt goes; the queue re-checks shrunk keys lazily
        queue.on_cache_insert(tokens, matched, len(tokens))
        t += model.prefill_s(len(tokens), matched)
        order.append(j)
    return tuple(order)


def policy_value(queries: Sequence[Query], model: ServerModel, objective: Objective, policy: PolicySpec) -> float:
    return evaluate(queries, policy_order(queries, model, queue_k(policy)), model, objective)


# -- exact solvers -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Solution:
    value: float
    order: tuple[int, ...]
    nodes_expanded: int  # search nodes (partial orders) expanded; for brute force, the orders evaluated


class NodeLimitExceeded(RuntimeError):
    """The search met its node limit before proving optimality; ``incumbent`` is the best order found so far."""

    def __init__(self, node_limit: int, incumbent: Solution) -> None:
        super().__init__(f"branch and bound stopped at {node_limit} nodes (best so far {incumbent.value})")
        self.incumbent = incumbent


BRUTE_FORCE_MAX_QUERIES = 9


def brute_force(
    queries: Sequence[Query], model: ServerModel, objective: Objective, *, work_conserving: bool = False
) -> Solution:
    """The best of all orders (or of the work-conserving ones), by evaluating every permutation."""
    n = len(queries)
    if n > BRUTE_FORCE_MAX_QUERIES:
        raise ValueError(f"brute force over {n}! orders is too slow; at most {BRUTE_FORCE_MAX_QUERIES} queries")
    best: tuple[float, tuple[int, ...]] | None = None
    count = 0
    for order in permutations(range(n)):
        s = schedule(queries, order, model)
        count += 1
        if work_conserving and not s.work_conserving:
            continue
        v = objective_value(s.ttft_s, objective)
        if best is None or v < best[0]:
            best = (v, order)
    assert best is not None  # the FCFS order is work-conserving
    return Solution(best[0], best[1], count)


HEURISTIC_KS: tuple[int | None, ...] = (1, 2, 3, 4, None)  # the policies whose orders seed the incumbent


def solve(
    queries: Sequence[Query], model: ServerModel, objective: Objective, *, node_limit: int | None = None
) -> Solution:
    """The optimal value and an optimal order over all orders (see the module docstring), by branch and bound.

    Raises :class:`NodeLimitExceeded` (carrying the best order found) after ``node_limit`` expanded nodes.
    """
    seeds = {o: evaluate(queries, o, model, objective) for o in sorted({policy_order(queries, model, k)
                                                                       for k in HEURISTIC_KS})}
    incumbent = min(seeds, key=seeds.__getitem__)
    search = _Search(queries, model, objective, incumbent, seeds[incumbent], node_limit)
    search.run()
    order = tuple(search.best_order)
    return Solution(evaluate(queries, order, model, objective), order, search.nodes)


class _Search:
    """Depth-first branch and bound over orders, extending a partial order by one query at a time.

    A node is a partial order: the set done (a bitmask), the cache state, the time t the server frees up and
    the objective so far v. Costs come from the prompts' pairwise common-prefix lengths: under
    ``last_prompt`` query j after query i costs ``after[i][j]``; under ``radix`` it costs the least of
    ``after[i][j]`` over the processed i (the longest match), or its cold cost.

    Pruning, each valid for both objectives (both are non-decreasing in every completion time):
    * bound: each remaining query j costs at least ``floor[j]`` (its cost after the query it shares most with);
      for max TTFT, FCFS over the remaining queries with those costs from t is optimal for the relaxed problem
      (fixed costs), so its max TTFT bounds every completion; for the late count, a query that is late even if
      started next at its floor cost is late.
    * dominance: two partial orders with the same done set that leave the same cache (same last query under
      ``last_prompt``; the same set is the same cache under ``radix``) face the same future, which can only get
      worse with a later t; a node with t and v both no better than another's is dropped.
    """

    def __init__(
        self,
        queries: Sequence[Query],
        model: ServerModel,
        objective: Objective,
        incumbent: tuple[int, ...],
        incumbent_value: float,
        node_limit: int | None,
    ) -> None:
        n = self.n = len(queries)
        self.release = [q.arrival_s for q in queries]
        lens = [len(q.tokens) for q in queries]
        self.cold = [model.prefill_s(lens[j], 0) for j in range(n)]
        self.after = [
            [model.prefill_s(lens[j], common_prefix_len(queries[j].tokens, 0, queries[i].tokens)) for j in range(n)]
            for i in range(n)
        ]
        self.floor = [min([self.cold[j]] + [self.after[i][j] for i in range(n) if i != j]) for j in range(n)]
        self.by_release = sorted(range(n), key=lambda j: self.release[j])
        self.last_prompt = model.cache == "last_prompt"
        self.max_ttft = isinstance(objective, MaxTTFT)
        self.bound_s = objective.ttft_bound_s if isinstance(objective, LateCount) else 0.0
        self.best, self.best_order = incumbent_value, list(incumbent)
        self.node_limit, self.nodes = node_limit, 0
        self.front: dict[tuple[int, int], list[tuple[float, float]]] = {}
        self.path: list[int] = []

    def run(self) -> None:
        if self.n:
            self._visit(0, list(self.cold), -math.inf, 0.0)

    def _visit(self, mask: int, costs: list[float], t: float, v: float) -> None:
        self.nodes += 1
        if self.node_limit is not None and self.nodes > self.node_limit:
            raise NodeLimitExceeded(self.node_limit, Solution(self.best, tuple(self.best_order), self.nodes))
        full = (1 << self.n) - 1
        release = self.release
        children = []
        for j in range(self.n):
            if mask >> j & 1:
                continue
            done = max(t, release[j]) + costs[j]
            ttft = done - release[j]
            nv = max(v, ttft) if self.max_ttft else (v + 1.0 if ttft > self.bound_s else v)
            if nv < self.best:
                children.append((nv, done, j))
        children.sort()
        for nv, done, j in children:
            if nv >= self.best:  # the incumbent may have improved in an earlier sibling
                continue
            child_mask = mask | 1 << j
            if child_mask == full:
                self.best, self.best_order = nv, [*self.path, j]
                continue
            if self._bound(child_mask, done, nv) >= self.best:
                continue
            key = (child_mask, j if self.last_prompt else -1)
            if self._dominated(key, done, nv):
                continue
            after_j = self.after[j]
            child_costs = after_j if self.last_prompt else [min(c, a) for c, a in zip(costs, after_j, strict=True)]
            self.path.append(j)
            self._visit(child_mask, child_costs, done, nv)
            self.path.pop()

    def _bound(self, mask: int, t: float, v: float) -> float:
        release, floor = self.release, self.floor
        if self.max_ttft:
            for j in self.by_release:
                if not mask >> j & 1:
                    t = max(t, release[j]) + floor[j]
                    v = max(v, t - release[j])
            return v
        for j in range(self.n):
            if not mask >> j & 1 and max(t, release[j]) + floor[j] - release[j] > self.bound_s:
                v += 1.0
        return v

    def _dominated(self, key: tuple[int, int], t: float, v: float) -> bool:
        front = self.front.setdefault(key, [])
        for t0, v0 in front:
            if t0 <= t and v0 <= v:
                return True
        front[:] = [(t0, v0) for t0, v0 in front if not (t <= t0 and v <= v0)]
        front.append((t, v))
        return False


# -- a policy against the optimum ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    policy_value: float
    optimal_value: float
    policy_order: tuple[int, ...]
    optimal_order: tuple[int, ...]

    @property
    def ratio(self) -> float:
        """policy / optimum (>= 1); 1 when both are 0, inf when only the optimum is 0 (late count)."""
        if self.optimal_value == 0:
            return 1.0 if self.policy_value == 0 else math.inf
        return self.policy_value / self.optimal_value


def compare_to_optimum(
    queries: Sequence[Query],
    model: ServerModel,
    objective: Objective,
    policy: PolicySpec,
    *,
    optimum: Solution | None = None,
    node_limit: int | None = None,
) -> Comparison:
    """A policy's value on an instance beside the optimum's (pass ``optimum`` to reuse one solve for many policies)."""
    opt = optimum if optimum is not None else solve(queries, model, objective, node_limit=node_limit)
    order = policy_order(queries, model, queue_k(policy))
    return Comparison(evaluate(queries, order, model, objective), opt.value, order, opt.order)


def optimality_ratio(
    queries: Sequence[Query], model: ServerModel, objective: Objective, policy: PolicySpec
) -> float:
    """policy value / optimal value on one instance (see :attr:`Comparison.ratio`)."""
    return compare_to_optimum(queries, model, objective, policy).ratio
