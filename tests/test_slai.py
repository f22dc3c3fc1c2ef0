"""SLAI's rules as pure functions, and the token-budget PolicySpecs: knobs validated, CLI form round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schedctl.policies import slai
from schedctl.policies.spec import (
    RADSpec,
    SarathiSpec,
    SLAISpec,
    is_token_budget,
    parse_policy,
    policy_from_json,
    policy_label,
    queue_k,
    split_policies,
)

SPEC = SLAISpec()


def test_defaults_are_the_papers_operator_settings():
    assert (SPEC.token_budget, SPEC.max_running_requests, SPEC.decode_cap) == (512, 128, 128)
    assert (SPEC.tbt_strict_s, SPEC.tbt_relaxed_s, SPEC.tbt_default_s) == (0.1, 0.5, 0.2)
    assert (SPEC.theta_low, SPEC.theta_high, SPEC.memory_limit) == (5.0, 10.0, 0.96)
    assert SPEC.prefill_order == "spf" and not SPEC.strict_first


@pytest.mark.parametrize(("kv", "expected"), [(0.0, 5.0), (0.9599, 5.0), (0.96, 10.0), (0.97, 10.0), (1.0, 10.0)])
def test_theta_switches_at_the_memory_limit(kv: float, expected: float):
    assert slai.theta(SPEC, kv) == expected


def test_a_decode_is_critical_once_its_last_schedulable_time_has_passed():
    spec = SLAISpec(tbt_slack_s=0.01)
    mean_s = 0.02
    deadline = 10.0 + spec.tbt_default_s  # its last token came at t = 10
    lst = slai.last_schedulable_s(deadline, slai.theta(spec, 0.5), mean_s, spec.tbt_slack_s)
    assert lst == pytest.approx(10.0 + 0.2 - 0.01 - 5 * 0.02)
    for now, critical in ((lst - 1e-6, False), (lst, True), (lst + 1e-6, True)):
        before = slai.critical_before_s(spec, now, 0.5, mean_s)
        assert (deadline <= before) is critical
    # above the memory limit the larger Θ makes it critical earlier
    assert slai.critical_before_s(spec, lst - 0.05, 0.99, mean_s) >= deadline


@pytest.mark.parametrize(
    ("deadlines", "before", "limit", "expected"),
    [([1.0, 2.0, 3.0], 2.0, 10, 2), ([1.0, 2.0, 3.0], 0.5, 10, 0), ([1.0, 2.0, 3.0], 9.0, 2, 2), ([], 9.0, 5, 0)],
)
def test_critical_count(deadlines: list[float], before: float, limit: int, expected: int):
    assert slai.critical_count(deadlines, before, limit) == expected


@pytest.mark.parametrize(
    ("n", "crit", "left", "cap", "expected"),
    [(10, 2, 100, 128, 8), (10, 2, 3, 128, 3), (10, 2, 100, 5, 3), (10, 10, 100, 128, 0), (10, 2, 0, 128, 0)],
)
def test_leftover_decodes_fill_budget_and_cap(n: int, crit: int, left: int, cap: int, expected: int):
    assert slai.leftover_decodes(n, crit, left, cap) == expected


def test_prefill_keys_order_shortest_first_strict_first_and_retracted_first():
    def order(kind: str, strict_first: bool, reqs: list[tuple[int, str, int, bool]]) -> list[int]:
        return sorted(range(len(reqs)), key=lambda i: slai.prefill_key(kind, strict_first, *reqs[i]))

    reqs = [(300, "relaxed", 0, False), (50, "strict", 1, False), (120, "relaxed", 2, False), (80, "strict", 3, True)]
    assert order("spf", False, reqs) == [3, 1, 2, 0]  # retracted first, then shortest
    assert order("spf", True, reqs[:3]) == [1, 2, 0]
    assert order("spf", True, [(50, "relaxed", 0, False), (400, "strict", 1, False)]) == [1, 0]
    assert order("fcfs", False, reqs[:3]) == [0, 1, 2]


def test_unknown_slo_class_is_refused_naming_it():
    with pytest.raises(ValueError, match="slo_class 'gold' is not a TBT class SLAI knows"):
        slai.tbt_slo_s(SPEC, "gold")


def test_retuning_moves_theta_or_slack_keeps_the_rest_and_validates():
    tuned = slai.with_theta(SLAISpec(token_budget=256), 7.5)
    assert (tuned.theta_low, tuned.theta_high, tuned.token_budget) == (7.5, 12.5, 256)
    assert slai.with_theta(SPEC, 0.0).theta_high == 5.0
    assert slai.with_tbt_slack(tuned, 0.03) == tuned.model_copy(update={"tbt_slack_s": 0.03})
    with pytest.raises(ValidationError, match="theta_low"):
        slai.with_theta(SPEC, float("nan"))
    with pytest.raises(ValidationError, match="tbt_slack_s"):
        slai.with_tbt_slack(SPEC, -0.1)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("slai:token_budget=-1", "token_budget", "greater than or equal to 1"),
        ("slai:theta_low=abc", "theta_low", "valid number"),
        ("slai:theta_high=nan", "theta_high", "finite number"),
        ("slai:theta_low=inf", "theta_low", "finite number"),
        ("slai:tbt_strict_s=0", "tbt_strict_s", "greater than 0"),
        ("slai:memory_limit=1.5", "memory_limit", "less than or equal to 1"),
        ("slai:prefill_order=lifo", "prefill_order", "'spf' or 'fcfs'"),
        ("slai:strict_first=maybe", "strict_first", "valid boolean"),
        ("slai:decode_cap=0", "decode_cap", "greater than or equal to 1"),
        ("sarathi:token_budget=-5", "token_budget", "greater than or equal to 1"),
        ("rad:tile_tokens=0", "tile_tokens", "greater than or equal to 1"),
        ("rad:prefill_batches_per_cycle=x", "prefill_batches_per_cycle", "valid integer"),
    ],
)
def test_bad_knob_values_are_refused_naming_the_field(text: str, field: str, reason: str):
    with pytest.raises(ValueError, match=f"knob '{field}': .*{reason}"):
        parse_policy(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slai:tbt_gold_s=0.3", "unknown knob 'tbt_gold_s'"),
        ("slai:class=gold", "unknown knob 'class'"),
        ("slai:theta_low", "'theta_low' is not KNOB=VALUE"),
        ("slai:theta_low=1,theta_low=2", "knob 'theta_low' given twice"),
        ("sarathi:max_running_requests=1024", "max_running_requests \\(1024\\) must be <= token_budget \\(512\\)"),
        ("orca", "unknown policy"),
    ],
)
def test_malformed_policies_are_refused_clearly(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        parse_policy(text)


def test_json_boundary_refuses_bad_values_naming_the_field():
    with pytest.raises(ValidationError, match="theta_low"):
        policy_from_json('{"kind": "slai", "theta_low": "NaN"}')
    with pytest.raises(ValidationError, match="token_budget"):
        policy_from_json('{"kind": "sarathi", "token_budget": -1}')


knob_specs = st.one_of(
    st.builds(SarathiSpec, token_budget=st.integers(256, 4096), max_running_requests=st.integers(1, 256)),
    st.builds(
        SLAISpec,
        token_budget=st.integers(1, 4096), decode_cap=st.integers(1, 512),
        tbt_strict_s=st.floats(0.001, 10), tbt_relaxed_s=st.floats(0.001, 10),
        tbt_slack_s=st.floats(0, 1), theta_low=st.floats(0, 50), theta_high=st.floats(0, 50),
        memory_limit=st.floats(0.01, 1), prefill_order=st.sampled_from(["spf", "fcfs"]), strict_first=st.booleans(),
    ),
    st.builds(RADSpec, prefill_batches_per_cycle=st.integers(1, 9), tile_tokens=st.none() | st.integers(1, 256)),
)


@given(knob_specs)
def test_policy_label_round_trips(spec: SarathiSpec | SLAISpec | RADSpec):
    label = policy_label(spec)
    assert parse_policy(label) == spec
    assert policy_from_json(spec.model_dump_json()) == spec
    assert json.loads(spec.model_dump_json())["kind"] == spec.kind


def test_labels_leave_defaults_out_and_families_are_told_apart():
    assert policy_label(SLAISpec()) == "slai"
    assert policy_label(SLAISpec(theta_low=6.0, strict_first=True)) == "slai:theta_low=6.0,strict_first=true"
    assert all(is_token_budget(parse_policy(p)) for p in ("sarathi", "slai", "rad"))
    assert not any(is_token_budget(parse_policy(p)) for p in ("fcfs", "lpm", "klpm:3"))
    with pytest.raises(TypeError):
        queue_k(SLAISpec())


def test_split_policies_keeps_knobs_with_their_policy():
    assert split_policies("sarathi, slai:theta_low=5,token_budget=256,lpm,klpm:3,rad:tile_tokens=64") == [
        "sarathi", "slai:theta_low=5,token_budget=256", "lpm", "klpm:3", "rad:tile_tokens=64"]
