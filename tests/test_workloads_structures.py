"""Prompt structures: what each workload shares, what it keeps unique, and its length distributions."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import pytest

from schedctl.workloads import (
    SYNTHETIC_TOKEN_BASE,
    ChatParams,
    GspParams,
    RasqParams,
    Request,
    ShareGptParams,
    TreeParams,
    make_requests,
)
from schedctl.workloads.chat import expected_turns
from schedctl.workloads.shared_prefix import zipf_probs


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _gen(workload: object, n: int, seed: int = 0, rate: float = 50.0, arrival: str = "poisson") -> list[Request]:
    return list(make_requests(workload, rate, arrival, num_requests=n, seed=seed))  # type: ignore[arg-type]


# --- gsp ------------------------------------------------------------------------------------------------------


def test_gsp_prompts_in_a_group_share_exactly_the_system_prompt() -> None:
    p = GspParams(num_groups=8, prompts_per_group=4, system_prompt_len=300, question_len=40, output_len=7)
    reqs = _gen(p, 200)
    by_group: dict[int, list[Request]] = defaultdict(list)
    for r in reqs:
        assert len(r.prompt) == 340 and r.output_len == 7
        by_group[r.group_id].append(r)  # type: ignore[index]
    assert sorted(by_group) == list(range(8))
    for members in by_group.values():
        for a, b in itertools.combinations(members[:6], 2):
            assert _common_prefix_len(a.prompt, b.prompt) == 300
            assert a.prompt[:300] == b.prompt[:300]
    for a, b in itertools.combinations([m[0] for m in by_group.values()], 2):
        assert _common_prefix_len(a.prompt, b.prompt) == 0


def test_gsp_token_ids_follow_the_convention_and_questions_are_distinct() -> None:
    p = GspParams(num_groups=4, prompts_per_group=4, system_prompt_len=64, question_len=16)
    reqs = _gen(p, 100)
    questions = [r.prompt[64:] for r in reqs]
    assert all(0 < t < SYNTHETIC_TOKEN_BASE for r in reqs for t in r.prompt[:64])
    assert all(t >= SYNTHETIC_TOKEN_BASE for q in questions for t in q)
    flat = [t for q in questions for t in q]
    assert len(flat) == len(set(flat))


def test_gsp_rounds_cover_the_grid_shuffled_or_ordered() -> None:
    p = GspParams(num_groups=16, prompts_per_group=5)
    reqs = _gen(p, 3 * 80)
    for rnd in range(3):
        groups = [r.group_id for r in reqs[rnd * 80 : (rnd + 1) * 80]]
        assert Counter(groups) == {g: 5 for g in range(16)}
        assert groups != sorted(groups)  # shuffled
    ordered = _gen(p.model_copy(update={"ordered": True}), 160)
    assert [r.group_id for r in ordered] == [g for _ in range(2) for g in range(16) for _ in range(5)]


def test_gsp_zipf_popularity_matches_the_rank_law() -> None:
    p = GspParams(num_groups=10, group_distribution="zipf", zipf_alpha=1.2, system_prompt_len=8, question_len=2)
    reqs = _gen(p, 20_000)
    freq = np.bincount([r.group_id for r in reqs], minlength=10) / len(reqs)  # type: ignore[misc]
    assert np.allclose(freq, zipf_probs(10, 1.2), atol=0.015)
    assert freq[0] > 2 * freq[2]


def test_gsp_range_ratio_varies_lengths_within_bounds() -> None:
    p = GspParams(num_groups=32, system_prompt_len=100, question_len=50, output_len=80, range_ratio=0.5)
    reqs = _gen(p, 2000)
    out = np.array([r.output_len for r in reqs])
    assert out.min() >= 40 and out.max() <= 80 and len(set(out.tolist())) > 20
    by_group: dict[int, list[Request]] = defaultdict(list)
    for r in reqs:
        by_group[r.group_id].append(r)  # type: ignore[index]
    system_lens = [_common_prefix_len(m[0].prompt, m[1].prompt) for m in by_group.values()]
    assert min(system_lens) >= 50 and max(system_lens) <= 100 and len(set(system_lens)) > 5


# --- rasq -----------------------------------------------------------------------------------------------------


def test_rasq_has_u_shared_and_d_unique_tokens() -> None:
    p = RasqParams(num_groups=6, queries_per_group=5, shared_len=120, unique_len=30, output_len=3)
    reqs = _gen(p, 90, arrival="regular", rate=10.0)
    assert np.allclose(np.diff([r.arrival_s for r in reqs]), 0.1)
    for a, b in itertools.combinations(reqs[:30], 2):
        assert len(a.prompt) == 150
        assert _common_prefix_len(a.prompt, b.prompt) == (120 if a.group_id == b.group_id else 0)
    rounds = [[r.group_id for r in reqs[rnd * 30 : (rnd + 1) * 30]] for rnd in range(3)]
    for groups in rounds:
        assert Counter(groups) == {g: 5 for g in range(6)}
        assert groups != sorted(groups)  # queries come shuffled...
    assert rounds[0] != rounds[1]  # ...afresh each round


def test_rasq_group_shuffle_keeps_each_group_back_to_back() -> None:
    p = RasqParams(num_groups=6, queries_per_group=5, shuffle="groups")
    groups = [r.group_id for r in _gen(p, 60)]
    orders = []
    for rnd in range(2):
        blocks = [groups[rnd * 30 + 5 * b : rnd * 30 + 5 * (b + 1)] for b in range(6)]
        assert all(len(set(block)) == 1 for block in blocks)
        orders.append([block[0] for block in blocks])
        assert sorted(orders[-1]) == list(range(6))
    assert orders[0] != orders[1]  # a fresh group order each round


# --- tree -----------------------------------------------------------------------------------------------------


def test_tree_shares_exactly_the_common_levels() -> None:
    p = TreeParams(num_instructions=2, profiles_per_instruction=3, histories_per_profile=2,
                   instruction_len=50, profile_len=20, history_len=30, question_len=10)
    reqs = _gen(p, 400)
    per_profile = p.histories_per_profile
    per_instruction = p.profiles_per_instruction * per_profile
    seen = set()
    for a, b in itertools.combinations(reqs[:60], 2):
        la, lb = a.group_id, b.group_id
        assert la is not None and lb is not None
        if la == lb:
            expected = 100
        elif la // per_profile == lb // per_profile:
            expected = 70
        elif la // per_instruction == lb // per_instruction:
            expected = 50
        else:
            expected = 0
        seen.add(expected)
        assert len(a.prompt) == 110
        assert _common_prefix_len(a.prompt, b.prompt) == expected
    assert seen == {0, 50, 70, 100}
    assert len({r.group_id for r in reqs}) == 12


def test_tree_popularity_skews_towards_the_first_children() -> None:
    p = TreeParams(popularity_alpha=1.5)
    leaves = np.array([r.group_id for r in _gen(p, 5000)])
    instruction = leaves // (p.profiles_per_instruction * p.histories_per_profile)
    assert np.mean(instruction == 0) == pytest.approx(zipf_probs(4, 1.5)[0], abs=0.03)


# --- sharegpt -------------------------------------------------------------------------------------------------


def test_sharegpt_lengths_are_heavy_tailed_with_the_documented_medians() -> None:
    p = ShareGptParams()
    reqs = _gen(p, 20_000)
    prompt = np.array([len(r.prompt) for r in reqs])
    output = np.array([r.output_len for r in reqs])
    assert np.median(prompt) == pytest.approx(p.prompt_median_len, rel=0.06)
    assert np.median(output) == pytest.approx(p.output_median_len, rel=0.06)
    for x in (prompt, output):  # heavy right tail: mean well above median, far P99
        assert x.mean() > 1.4 * np.median(x)
        assert np.percentile(x, 99) > 6 * np.median(x)
    assert np.all(prompt + output <= p.max_context_len)
    assert {r.slo_class for r in reqs} == {"default"}
    firsts = [r.prompt[0] for r in reqs]
    assert len(firsts) == len(set(firsts))  # no sharing


def test_sharegpt_clips_to_the_context_window() -> None:
    p = ShareGptParams(prompt_median_len=900, prompt_sigma=1.5, max_context_len=1024)
    reqs = _gen(p, 3000)
    totals = [len(r.prompt) + r.output_len for r in reqs]
    assert max(totals) <= 1024 and sum(t == 1024 for t in totals) > 100


def test_sharegpt_strict_fraction_marks_that_share() -> None:
    reqs = _gen(ShareGptParams(strict_fraction=0.3), 10_000)
    classes = Counter(r.slo_class for r in reqs)
    assert set(classes) == {"strict", "relaxed"}
    assert classes["strict"] / len(reqs) == pytest.approx(0.3, abs=0.02)


# --- chat -----------------------------------------------------------------------------------------------------


def test_chat_turn_extends_previous_prompt_and_output() -> None:
    p = ChatParams(system_prompt_len=40, user_message_len=20, output_len=30, mean_turns=4, think_time_s=10,
                   min_think_time_s=2)
    reqs = _gen(p, 3000, rate=5.0)
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(reqs))
    assert [r.request_id for r in reqs] == list(range(len(reqs)))
    sessions: dict[int, list[Request]] = defaultdict(list)
    for r in reqs:
        assert r.session_id is not None
        sessions[r.session_id].append(r)
    multi = [s for s in sessions.values() if len(s) >= 3]
    assert len(multi) > 50
    system = reqs[0].prompt[:40]
    for turns in sessions.values():
        assert turns[0].prompt[:40] == system
        for prev, nxt in itertools.pairwise(turns):
            assert prev.output_tokens is not None and len(prev.output_tokens) == prev.output_len
            base = prev.prompt + prev.output_tokens
            assert nxt.prompt[: len(base)] == base and len(nxt.prompt) > len(base)
            assert nxt.arrival_s - prev.arrival_s >= 2.0
    # the last turn of a finished session carries no output tokens (nobody reuses them)
    finished = [s for s in sessions.values() if s[-1].arrival_s < reqs[-1].arrival_s - 200]
    assert finished and all(s[-1].output_tokens is None for s in finished)
    # sessions interleave
    order = [r.session_id for r in reqs[:200]]
    assert any(a != b for a, b in itertools.pairwise(order)) and len(set(order)) < 200


def test_chat_request_rate_matches_the_schedule() -> None:
    p = ChatParams(think_time_s=8.0, min_think_time_s=1.0)
    reqs = list(make_requests(p, 20.0, duration_s=1500.0, seed=2))
    steady = [r for r in reqs if r.arrival_s >= 300.0]  # past the warm-up of the first sessions
    assert len(steady) / 1200.0 == pytest.approx(20.0, rel=0.06)
    assert expected_turns(p) == pytest.approx(
        np.mean(np.minimum(np.random.default_rng(0).geometric(1 / 4, 200_000), 16)), rel=0.01)


def test_chat_sessions_end_before_exceeding_the_context() -> None:
    p = ChatParams(system_prompt_len=100, user_message_len=200, output_len=300, mean_turns=12, max_context_len=2000)
    reqs = _gen(p, 2000)
    assert max(len(r.prompt) + r.output_len for r in reqs) <= 2000
