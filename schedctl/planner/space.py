"""The search space of the capacity planner: plans, the GPU offerings they draw on, and the neighbour moves.

A :class:`Plan` is a fleet — ``{GPU type: replica count}``, mixed fleets allowed — plus the scheduling policy
every replica runs. A :class:`PlanSpace` is the set of plans an operator can buy: the GPU types of the catalog
that can hold the model, each at most ``max_replicas`` times (the catalog's ``max_available``), at least one
replica in all, times the candidate policies. Every plan the planner builds comes from here (a random plan, a
neighbour of a plan), so none exceeds an availability limit; :meth:`PlanSpace.check` refuses one that does.

Neighbour moves (what simulated annealing proposes): add one replica of a type, remove one, swap one replica
of a type for one of another type, change the policy. A random neighbour is drawn in two steps from a seeded
``numpy.random.Generator``: a kind of move uniformly among the kinds the plan allows, then a move of that kind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from itertools import product

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schedctl.files import InputFileError
from schedctl.policies.spec import PolicySpec, policy_label
from schedctl.sim.profiles import GPUProfile, ModelProfile, known_gpus, kv_capacity_tokens, load_gpu


class Plan(BaseModel):
    """A fleet and its scheduling policy. Hashable (the planner memoises evaluations by plan).

    ``replicas`` keeps GPU types with at least one replica, in name order: ``{"a100-80gb": 2, "h100-sxm": 1}``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: dict[str, int]
    policy: PolicySpec

    @field_validator("replicas")
    @classmethod
    def _normalise(cls, value: dict[str, int]) -> dict[str, int]:
        for key, count in value.items():
            if count < 0:
                raise ValueError(f"{key}: replica count must be >= 0, got {count}")
        return {k: value[k] for k in sorted(value) if value[k] > 0}

    def key(self) -> tuple[tuple[tuple[str, int], ...], str]:
        return tuple(self.replicas.items()), self.policy.model_dump_json()

    def __hash__(self) -> int:
        return hash(self.key())

    @property
    def total_replicas(self) -> int:
        return sum(self.replicas.values())

    def label(self) -> str:
        """``2×a100-80gb + 1×h100-sxm · klpm:4``"""
        fleet = " + ".join(f"{n}×{gpu}" for gpu, n in self.replicas.items()) or "(no replicas)"
        return f"{fleet} · {policy_label(self.policy)}"


class Offering(BaseModel):
    """One GPU type the planner may buy: its profile, its price and how many are available."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    gpu: GPUProfile
    price_usd_per_hour: float = Field(ge=0)
    max_replicas: int = Field(ge=1)


class PlanSpace(BaseModel):
    """Offerings (in a fixed order) × replica counts within their limits × policies; at least one replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offerings: tuple[Offering, ...] = Field(min_length=1)
    policies: tuple[PolicySpec, ...] = Field(min_length=1)

    @field_validator("offerings")
    @classmethod
    def _distinct_offerings(cls, value: tuple[Offering, ...]) -> tuple[Offering, ...]:
        keys = [o.key for o in value]
        if len(set(keys)) != len(keys):
            raise ValueError(f"GPU types listed twice: {keys}")
        return value

    @field_validator("policies")
    @classmethod
    def _distinct_policies(cls, value: tuple[PolicySpec, ...]) -> tuple[PolicySpec, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"policies listed twice: {[policy_label(p) for p in value]}")
        return value

    # -- the plans ---------------------------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.offerings)

    @property
    def limits(self) -> tuple[int, ...]:
        return tuple(o.max_replicas for o in self.offerings)

    def size(self) -> int:
        """How many plans there are: every count vector but all-zero, times the policies."""
        return (math.prod(m + 1 for m in self.limits) - 1) * len(self.policies)

    def counts(self, plan: Plan) -> list[int]:
        return [plan.replicas.get(k, 0) for k in self.keys]

    def make(self, counts: Sequence[int], policy: PolicySpec) -> Plan:
        return Plan(replicas=dict(zip(self.keys, (int(c) for c in counts), strict=True)), policy=policy)

    def all_plans(self) -> Iterator[Plan]:
        """Every plan, in a fixed order (exhaustive search)."""
        for counts in product(*(range(m + 1) for m in self.limits)):
            if any(counts):
                for policy in self.policies:
                    yield self.make(counts, policy)

    def check(self, plan: Plan) -> None:
        """Raise ValueError unless ``plan`` is in the space (known types, within limits, a listed policy)."""
        limits = dict(zip(self.keys, self.limits, strict=True))
        for gpu, count in plan.replicas.items():
            if gpu not in limits:
                raise ValueError(f"replicas.{gpu}: not a GPU type of this plan space (known: {', '.join(self.keys)})")
            if count > limits[gpu]:
                raise ValueError(f"replicas.{gpu}: {count} replicas exceed the availability limit of {limits[gpu]}")
        if plan.total_replicas < 1:
            raise ValueError("replicas: a plan needs at least one replica")
        if plan.policy not in self.policies:
            raise ValueError(f"policy: {policy_label(plan.policy)} is not one of the candidate policies")

    def project(self, plan: Plan) -> Plan:
        """The plan itself if it is in the space, else the nearest one: unknown types dropped, counts cut to their
        limits, an unknown policy replaced by the first candidate; a fleet left empty gets one replica of the
        cheapest type. (Re-planning after the offerings changed starts from here.)"""
        counts = [min(plan.replicas.get(k, 0), m) for k, m in zip(self.keys, self.limits, strict=True)]
        policy = plan.policy if plan.policy in self.policies else self.policies[0]
        if not any(counts):
            return self.smallest_plan().model_copy(update={"policy": policy})
        return self.make(counts, policy)

    def cost_usd_per_hour(self, plan: Plan) -> float:
        prices = {o.key: o.price_usd_per_hour for o in self.offerings}
        return sum(prices[gpu] * n for gpu, n in plan.replicas.items())

    @property
    def max_price_usd_per_hour(self) -> float:
        return max(o.price_usd_per_hour for o in self.offerings)

    @property
    def mean_price_usd_per_hour(self) -> float:
        return sum(o.price_usd_per_hour for o in self.offerings) / len(self.offerings)

    def smallest_plan(self) -> Plan:
        """One replica of the cheapest GPU type (the first listed among equals), under the first policy."""
        cheapest = min(range(len(self.offerings)), key=lambda i: self.offerings[i].price_usd_per_hour)
        return self.make([1 if i == cheapest else 0 for i in range(len(self.offerings))], self.policies[0])

    # -- random choices (seeded by the caller's generator) -----------------------------------------------------
    def random_plan(self, rng: np.random.Generator) -> Plan:
        """A plan drawn uniformly from the space."""
        while True:
            counts = [int(rng.integers(0, m + 1)) for m in self.limits]
            if any(counts):
                return self.make(counts, self.policies[int(rng.integers(len(self.policies)))])

    def neighbours(self, plan: Plan) -> list[Plan]:
        """Every plan one move away from ``plan``, in a fixed order (add, remove, swap, policy)."""
        return [self._apply(plan, kind, arg) for kind, args in self._moves(plan).items() for arg in args]

    def neighbour(self, plan: Plan, rng: np.random.Generator) -> Plan:
        """One random move from ``plan``: a kind of move uniformly among those ``plan`` allows, then one move of
        that kind uniformly (so the few policy moves are not swamped by the many swaps)."""
        moves = self._moves(plan)
        if not moves:
            return plan  # a one-plan space
        kind = list(moves)[int(rng.integers(len(moves)))]
        args = moves[kind]
        return self._apply(plan, kind, args[int(rng.integers(len(args)))])

    def _moves(self, plan: Plan) -> dict[str, list[tuple[int, int]]]:
        """The moves ``plan`` allows, by kind: (type index, -) to add or remove, (from, to) to swap, (policy, -)."""
        counts = self.counts(plan)
        limits = self.limits
        n = len(counts)
        moves = {
            "add": [(i, 0) for i in range(n) if counts[i] < limits[i]],
            "remove": [(i, 0) for i in range(n) if counts[i] > 0] if sum(counts) >= 2 else [],
            "swap": [(i, j) for i in range(n) for j in range(n) if i != j and counts[i] > 0 and counts[j] < limits[j]],
            "policy": [(k, 0) for k, p in enumerate(self.policies) if p != plan.policy],
        }
        return {kind: args for kind, args in moves.items() if args}

    def _apply(self, plan: Plan, kind: str, arg: tuple[int, int]) -> Plan:
        counts = self.counts(plan)
        i, j = arg
        if kind == "policy":
            return self.make(counts, self.policies[i])
        if kind == "add":
            counts[i] += 1
        elif kind == "remove":
            counts[i] -= 1
        else:
            counts[i] -= 1
            counts[j] += 1
        return self.make(counts, plan.policy)


# -- from a catalog file -----------------------------------------------------------------------------------------


def offerings_from_catalog(
    model: ModelProfile, catalog: str | os.PathLike[str] | None = None, gpus: Sequence[str] | None = None,
    default_max_replicas: int = 8,
) -> tuple[list[Offering], dict[str, str]]:
    """The catalog's GPU types that can serve ``model``, and why the others were left out ({type: reason}).

    ``gpus`` restricts the types (None: all of them). A type without ``max_available`` may be bought up to
    ``default_max_replicas`` times; a type without ``price_per_hour_usd`` is an error (a plan could not be
    costed); one whose memory cannot hold the model's weights is left out.
    """
    path = catalog if catalog is not None else None
    known = known_gpus(path)
    chosen = list(gpus) if gpus is not None else known
    unknown = [g for g in chosen if g not in known]
    if unknown:
        raise ValueError(f"unknown GPU type(s) {', '.join(unknown)} (catalog has: {', '.join(known)})")
    offerings: list[Offering] = []
    skipped: dict[str, str] = {}
    for key in chosen:
        gpu = load_gpu(key, path)
        if gpu.price_per_hour_usd is None:
            where = os.fspath(catalog) if catalog is not None else "gpus.toml"
            raise InputFileError(where, f"{key}.price_per_hour_usd", "the planner needs a price for every GPU type")
        if gpu.max_available == 0:
            skipped[key] = "max_available = 0"
            continue
        try:
            kv_capacity_tokens(gpu, model)
        except ValueError as exc:
            skipped[key] = str(exc)
            continue
        offerings.append(Offering(key=key, gpu=gpu, price_usd_per_hour=gpu.price_per_hour_usd,
                                  max_replicas=gpu.max_available or default_max_replicas))
    return offerings, skipped

