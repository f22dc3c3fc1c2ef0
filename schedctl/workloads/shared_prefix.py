"""Prompt structures with shared prefixes: rasq (k-LPM's model), gsp (SGLang's benchmark), tree (four levels).

Token ids (int64 arrays, ``schedctl/tokens.py``): every shared segment is built once (on first use) and reused.
Shared segments take "vocabulary" ids counting up from 1 (below SYNTHETIC_TOKEN_BASE, the convention of
``tokens.py``), laid out arithmetically (group g's prefix is a fixed id range), so a segment can be built lazily in
any order and the result does not depend on which groups were drawn first. Unique parts (questions) take fresh
ids from an IdAllocator starting at SYNTHETIC_TOKEN_BASE (or above the shared ids, should those ever reach it):
all ids stay distinct. Lengths and choices come from the seeded Generator, drawn in numpy chunks; the per-request
Python work is one array concatenation (a memcpy) and one Request.

Open-ended streams (more requests than one pass over the groups): requests come in *rounds*; a round is the whole
group × query grid (num_groups × prompts_per_group), in a fresh random order each round (or group-major with
``ordered``), with fresh questions (new unique ids) and the same group prefixes. With a zipf group popularity a
round is a run of independent draws of the group. The first round is exactly one pass of SGLang's benchmark.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schedctl.tokens import SYNTHETIC_TOKEN_BASE, IdAllocator, TokenArray
from schedctl.workloads.types import Request

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_CHUNK = 4096


def zipf_probs(n: int, alpha: float) -> np.ndarray:
    """P(rank r) ∝ 1 / r**alpha for r = 1..n; index 0 is the most popular. alpha = 0 is uniform."""
    weights = 1.0 / np.arange(1, n + 1, dtype=float) ** alpha
    return weights / weights.sum()


def random_lens(rng: np.random.Generator, full_len: int, range_ratio: float, n: int) -> np.ndarray:
    """n lengths uniform in [max(1, full_len·range_ratio), full_len] (SGLang's rule); range_ratio 1: all full."""
    if range_ratio >= 1.0:
        return np.full(n, full_len, dtype=np.int64)
    return rng.integers(max(1, int(full_len * range_ratio)), full_len + 1, n)


def id_range(first_id: int, n: int) -> TokenArray:
    """The ids first_id, first_id + 1, ..., first_id + n - 1 as an int64 array."""
    out = array("q")
    out.frombytes(np.arange(first_id, first_id + n, dtype=np.int64).tobytes())
    return out


class _Segments:
    """Lazily built id ranges: segment i is ids [starts[i], starts[i] + lens[i])."""

    def __init__(self, first_id: int, lens: list[int]) -> None:
        self.lens = lens
        self.starts = (first_id + np.concatenate(([0], np.cumsum(lens)[:-1]))).tolist() if lens else []
        self.end_id = first_id + sum(lens)
        self.built: list[TokenArray | None] = [None] * len(lens)

    def get(self, i: int) -> TokenArray:
        seg = self.built[i]
        if seg is None:
            seg = self.built[i] = id_range(self.starts[i], self.lens[i])
        return seg


_FIRST_SHARED_ID = 1


def _unique_ids(shared: _Segments) -> IdAllocator:
    return IdAllocator(max(SYNTHETIC_TOKEN_BASE, shared.end_id))


def _grouped_stream(
    prefixes: _Segments,
    rounds: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
    arrivals_s: Iterator[float],
) -> Iterator[Request]:
    """Requests = prefix of the drawn group + a fresh unique part, over rounds of (groups, unique_lens, out_lens)."""
    take = _unique_ids(prefixes).take
    rid = 0
    built = prefixes.built
    for groups, unique_lens, output_lens in rounds:
        for lo in range(0, len(groups), _CHUNK):
            g_chunk = groups[lo : lo + _CHUNK].tolist()
            n = len(g_chunk)
            taken = 0
            for g, q, o, t in zip(
                g_chunk, unique_lens[lo : lo + n].tolist(), output_lens[lo : lo + n].tolist(), arrivals_s,
                strict=False,
            ):
                prefix = built[g] or prefixes.get(g)
                yield Request(rid, t, prefix + take(q), o, None, None, g, "default")
                rid += 1
                taken += 1
            if taken < n:
                return  # the arrivals ran out


# --- rasq -----------------------------------------------------------------------------------------------------


class RasqParams(BaseModel):
    """k-LPM's "regular arrival shuffled queue" (Dexter et al. 2025): num_groups groups, each with a shared prefix
    of shared_len (u) tokens; each query adds unique_len (d) unique tokens. Queries come in a shuffled order
    (use with arrival process "regular")."""

    model_config = _FROZEN
    name: Literal["rasq"] = "rasq"
    num_groups: int = Field(32, ge=1, description="prefix groups")
    queries_per_group: int = Field(16, ge=1, description="queries per group in one round")
    shared_len: int = Field(1024, ge=1, description="u: tokens of the prefix a group shares")
    unique_len: int = Field(64, ge=1, description="d: unique tokens per query")
    output_len: int = Field(32, ge=1, description="output tokens per query")
    shuffle: Literal["queries", "groups"] = Field(
        "queries", description="queries: a random permutation of all queries per round; "
        "groups: groups in random order, each group's queries back to back"
    )


def rasq_requests(p: RasqParams, rng: np.random.Generator, arrivals_s: Iterator[float]) -> Iterator[Request]:
    prefixes = _Segments(_FIRST_SHARED_ID, [p.shared_len] * p.num_groups)
    size = p.num_groups * p.queries_per_group
    unique = np.full(size, p.unique_len, dtype=np.int64)
    output = np.full(size, p.output_len, dtype=np.int64)

    def rounds() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        grid = np.repeat(np.arange(p.num_groups), p.queries_per_group)
        while True:
            if p.shuffle == "queries":
                yield rng.permutation(grid), unique, output
            else:
                yield np.repeat(rng.permutation(p.num_groups), p.queries_per_group), unique, output

    return _grouped_stream(prefixes, rounds(), arrivals_s)


# --- gsp ------------------------------------------------------------------------------------------------------


class GspParams(BaseModel):
    """SGLang bench_serving's generated-shared-prefix dataset (--gsp-* flags, same defaults): num_groups system
    prompts, prompts_per_group questions each. Beyond one pass, rounds repeat with fresh questions."""

    model_config = _FROZEN
    name: Literal["gsp"] = "gsp"
    num_groups: int = Field(64, ge=1, description="system prompts (--gsp-num-groups)")
    prompts_per_group: int = Field(16, ge=1, description="questions per system prompt per round")
    system_prompt_len: int = Field(2048, ge=1, description="tokens of a group's shared system prompt")
    question_len: int = Field(128, ge=1, description="unique tokens per request")
    output_len: int = Field(256, ge=1, description="output tokens per request")
    range_ratio: float = Field(
        1.0, ge=0, le=1, description="lengths uniform in [ratio·len, len]; 1 = fixed (--gsp-range-ratio)"
    )
    ordered: bool = Field(
        False, description="group-major order instead of a shuffle (--gsp-ordered; no effect with zipf)"
    )
    group_distribution: Literal["uniform", "zipf"] = Field(
        "uniform", description="uniform: every group prompts_per_group times per round; zipf: groups drawn by rank"
    )
    zipf_alpha: float | None = Field(None, gt=0, description="zipf exponent (needed with group_distribution=zipf)")

    @model_validator(mode="after")
    def _check(self) -> GspParams:
        if (self.group_distribution == "zipf") != (self.zipf_alpha is not None):
            raise ValueError("zipf_alpha must be set exactly when group_distribution is 'zipf'")
        return self


def gsp_requests(p: GspParams, rng: np.random.Generator, arrivals_s: Iterator[float]) -> Iterator[Request]:
    system_lens = random_lens(rng, p.system_prompt_len, p.range_ratio, p.num_groups).tolist()
    prefixes = _Segments(_FIRST_SHARED_ID, system_lens)
    size = p.num_groups * p.prompts_per_group
    probs = zipf_probs(p.num_groups, p.zipf_alpha) if p.zipf_alpha is not None else None

    def rounds() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        grid = np.repeat(np.arange(p.num_groups), p.prompts_per_group)
        while True:
            if probs is not None:
                groups = rng.choice(p.num_groups, size=size, p=probs)
            else:
                groups = grid if p.ordered else rng.permutation(grid)
            questions = random_lens(rng, p.question_len, p.range_ratio, size)
            outputs = random_lens(rng, p.output_len, p.range_ratio, size)
            yield groups, questions, outputs

    return _grouped_stream(prefixes, rounds(), arrivals_s)


# --- tree -----------------------------------------------------------------------------------------------------


class TreeParams(BaseModel):
    """A four-level prompt tree, as in k-LPM's evaluation: (instruction)(profile)(history)(question). Each request
    draws a path (at every level a child by zipf popularity; alpha 0 = uniform) and adds a unique question."""

    model_config = _FROZEN
    name: Literal["tree"] = "tree"
    num_instructions: int = Field(4, ge=1, description="instructions (tree roots)")
    profiles_per_instruction: int = Field(8, ge=1)
    histories_per_profile: int = Field(4, ge=1)
    instruction_len: int = Field(1024, ge=0)
    profile_len: int = Field(256, ge=0)
    history_len: int = Field(512, ge=0)
    question_len: int = Field(64, ge=1, description="unique tokens per request")
    output_len: int = Field(128, ge=1)
    popularity_alpha: float = Field(0.0, ge=0, description="zipf exponent of the child choice at every level")


def tree_requests(p: TreeParams, rng: np.random.Generator, arrivals_s: Iterator[float]) -> Iterator[Request]:
    n_i, n_p, n_h = p.num_instructions, p.profiles_per_instruction, p.histories_per_profile
    instr = _Segments(_FIRST_SHARED_ID, [p.instruction_len] * n_i)
    prof = _Segments(instr.end_id, [p.profile_len] * (n_i * n_p))
    hist = _Segments(prof.end_id, [p.history_len] * (n_i * n_p * n_h))
    # Full prefixes (instruction + profile [+ history]) are built once per node and then reused.
    to_profile: list[TokenArray | None] = [None] * (n_i * n_p)
    to_history: list[TokenArray | None] = [None] * (n_i * n_p * n_h)

    def leaf_prefix(i: int, ip: int, leaf: int) -> TokenArray:
        pre = to_profile[ip]
        if pre is None:
            pre = to_profile[ip] = instr.get(i) + prof.get(ip)
        full = to_history[leaf] = pre + hist.get(leaf)
        return full

    probs = [zipf_probs(n, p.popularity_alpha) for n in (n_i, n_p, n_h)]
    take = _unique_ids(hist).take
    rid = 0
    q, o = p.question_len, p.output_len
    while True:
        i_s = rng.choice(n_i, size=_CHUNK, p=probs[0])
        ip_s = i_s * n_p + rng.choice(n_p, size=_CHUNK, p=probs[1])
        leaf_s = ip_s * n_h + rng.choice(n_h, size=_CHUNK, p=probs[2])
        taken = 0
        for i, ip, leaf, t in zip(i_s.tolist(), ip_s.tolist(), leaf_s.tolist(), arrivals_s, strict=False):
            prefix = to_history[leaf] or leaf_prefix(i, ip, leaf)
            yield Request(rid, t, prefix + take(q), o, None, None, leaf, "default")
            rid += 1
            taken += 1
        if taken < _CHUNK:
            return
