"""One encoding of a queue policy: KLPMSpec(k: int | None); fcfs, lpm and klpm:inf are parse aliases."""

from __future__ import annotations

import pytest

from schedctl.controller.decision import Decision
from schedctl.engine_adapter.sglang import channel
from schedctl.policies.arms import spec_for
from schedctl.policies.spec import KLPMSpec, parse_policy, policy_from_dict, policy_label, queue_k


@pytest.mark.parametrize(("texts", "k", "label"), [
    (["fcfs", "klpm:1", "FCFS"], 1, "fcfs"),
    (["lpm", "klpm:inf", "klpm:INF", "klpm:∞"], None, "lpm"),
    (["klpm:4", "klpm: 4"], 4, "klpm:4"),
])
def test_one_policy_has_one_spec_and_one_label(texts: list[str], k: int | None, label: str) -> None:
    specs = {parse_policy(t) for t in texts}
    assert specs == {KLPMSpec(k=k)}
    assert policy_label(KLPMSpec(k=k)) == label and parse_policy(label) == KLPMSpec(k=k)
    assert queue_k(KLPMSpec(k=k)) == k and spec_for("inf" if k is None else k) == KLPMSpec(k=k)
    wire = {tuple(channel.encode_policy(s, 1).values()) for s in specs}
    assert len(wire) == 1  # one wire form too
    assert channel.decode_policy(*next(iter(wire))[:2]) == KLPMSpec(k=k)


def test_the_older_json_forms_still_read() -> None:
    assert policy_from_dict({"version": 1, "kind": "fcfs"}) == KLPMSpec(k=1)
    assert policy_from_dict({"version": 1, "kind": "lpm"}) == KLPMSpec(k=None)
    assert policy_from_dict({"version": 1, "kind": "klpm", "k": "inf"}) == KLPMSpec(k=None)
    assert KLPMSpec.model_validate_json(KLPMSpec(k=None).model_dump_json()) == KLPMSpec(k=None)


def test_a_decision_log_line_from_before_reads(tmp_path: object) -> None:
    line = ('{"tick_id": 1, "decision_id": "r:1", "time_s": 10.0, "window": {"start_s": 0, "end_s": 10, '
            '"arrivals": 0, "completions": 0, "arrival_rate_rps": 0, "queue_len": 0, "running": 0}, '
            '"learner": {"learner": "contextual"}, "previous": {"version": 1, "kind": "lpm"}, '
            '"policy": {"version": 1, "kind": "fcfs"}, "policy_label": "fcfs", "changed": true, "reason": "guard", '
            '"mode": "active"}')
    d = Decision.model_validate_json(line)
    assert d.policy == KLPMSpec(k=1) and d.previous == KLPMSpec(k=None)


@pytest.mark.parametrize("bad", [0, -1, 1_000_001, "x", 2.5, True])
def test_a_bad_k_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="k must"):
        KLPMSpec(k=bad)  # type: ignore[arg-type]


def test_fcfs_travels_as_the_code_that_needs_no_prefix_matching() -> None:
    # a server without --schedule-policy lpm refuses the prefix-matching codes (plugin.py): fcfs must not use one
    code = channel.encode_policy(parse_policy("klpm:1"), 1)[channel.KEY_KIND]
    assert channel.KIND_CODES[code] not in channel.PREFIX_MATCH_KINDS
