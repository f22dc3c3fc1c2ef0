"""Small scheduling instances for the exact optimum (``bench/oracle.py``): what a query is, and seeded generators.

An instance is a list of :class:`Query` (release time and prompt tokens); the cost and cache model live in
``oracle.ServerModel``. Token ids are labels: every shared prefix and every unique part gets fresh ids from a
counter, so two prompts share exactly the prefix the generator meant them to share. Shared prefixes take ids
counting up from 1, unique parts ids from ``SYNTHETIC_TOKEN_BASE`` (the convention of ``schedctl/tokens.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from schedctl.tokens import IdAllocator, TokenArray, as_tokens
from schedctl.workloads.shared_prefix import RasqParams, rasq_requests
from schedctl.workloads.types import Request


@dataclass(frozen=True, slots=True, init=False)
class Query:
    """One query of the offline model: released at ``arrival_s``, needs ``tokens`` prefilled (any int sequence,
    stored as the int64 array every schedctl token sequence is)."""

    arrival_s: float
    tokens: TokenArray

    def __init__(self, arrival_s: float, tokens: Sequence[int]) -> None:
        object.__setattr__(self, "arrival_s", float(arrival_s))
        object.__setattr__(self, "tokens", as_tokens(tokens))
        if not self.tokens:
            raise ValueError("a query needs at least one token")


def queries_from_requests(requests: Iterable[Request]) -> list[Query]:
    """The offline view of a workload's requests (arrival and prompt; outputs play no part in TTFT here)."""
    return [Query(r.arrival_s, r.prompt) for r in requests]


def regular_arrival_shuffled_queue(
    num_groups: int,
    queries_per_group: int,
    shared_prefix_tokens: int,
    unique_tokens: int,
    arrival_interval_s: float,
    seed: int,
) -> list[Query]:
    """The k-LPM paper's generative model: a height-two prefix tree, regular arrivals, shuffled group order.

    Group ``g`` has a shared prefix of ``shared_prefix_tokens`` (u) tokens; each of its queries appends
    ``unique_tokens`` (d) tokens of its own. The ``num_groups * queries_per_group`` queries arrive at
    ``0, interval, 2*interval, ...``; which group each arrival belongs to is a seeded random shuffle. One round of
    the workload generator ``workloads.shared_prefix.rasq_requests`` (the one implementation of this model).
    """
    params = RasqParams(
        num_groups=num_groups,
        queries_per_group=queries_per_group,
        shared_len=shared_prefix_tokens,
        unique_len=unique_tokens,
        output_len=1,
        shuffle="queries",
    )
    arrivals_s = (i * arrival_interval_s for i in itertools.count())
    requests = rasq_requests(params, np.random.default_rng(seed), arrivals_s)
    return queries_from_requests(itertools.islice(requests, num_groups * queries_per_group))


def random_prefix_tree(
    num_queries: int,
    seed: int,
    *,
    prefix_nodes: int = 3,
    segment_tokens: tuple[int, int] = (2, 8),
    unique_tokens: tuple[int, int] = (1, 6),
    arrival_span_s: float = 0.0,
) -> list[Query]:
    """Prompts drawn from a small random prefix tree, released at random times.

    The tree has ``prefix_nodes`` nodes besides the root; each hangs off a uniformly chosen earlier node by a
    segment of ``segment_tokens`` (inclusive range) fresh tokens. Each query picks a node uniformly (the root
    included: such a query shares nothing) and appends ``unique_tokens`` fresh tokens. Releases are uniform on
    ``[0, arrival_span_s]``, sorted (span 0: everything released at time 0). ``prefix_nodes=0`` gives an
    instance without any shared prefix.
    """
    if num_queries < 0 or prefix_nodes < 0 or min(segment_tokens) < 1 or min(unique_tokens) < 1:
        raise ValueError("need num_queries >= 0, prefix_nodes >= 0 and token ranges >= 1")
    rng = np.random.default_rng(seed)
    shared_ids, unique_ids = IdAllocator(base=1), IdAllocator()

    def draw(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    nodes: list[TokenArray] = [as_tokens(())]
    for _ in range(prefix_nodes):
        parent = nodes[int(rng.integers(len(nodes)))]
        nodes.append(parent + shared_ids.take(draw(segment_tokens)))
    arrivals = np.sort(rng.uniform(0.0, arrival_span_s, num_queries)) if arrival_span_s > 0 else np.zeros(num_queries)
    return [
        Query(float(arrivals[i]), nodes[int(rng.integers(len(nodes)))] + unique_ids.take(draw(unique_tokens)))
        for i in range(num_queries)
    ]
