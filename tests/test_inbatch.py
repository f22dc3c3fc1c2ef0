"""SGLang's in-batch prefix deprioritisation rule (policies/inbatch.py), shared by the plugin and the simulator."""

from __future__ import annotations

from schedctl.policies.inbatch import held_back

COLD = list(range(1000, 1040))  # 40 tokens no cache holds


def test_one_request_per_shared_cold_head_goes_ahead_in_pass_order() -> None:
    entries = [(0, [*COLD, 1], None), (0, [*COLD, 2], None), (0, [7, *COLD], None), (0, [*COLD, 3], None)]
    assert held_back(entries) == [False, True, False, True]


def test_requests_with_a_cached_prefix_are_not_checked_and_do_not_block_others() -> None:
    entries = [(33, [*COLD, 1], None), (32, [*COLD, 2], None), (0, [*COLD, 3], None)]
    assert held_back(entries) == [False, False, True]  # 33 > the check threshold; 32 is checked and inserted


def test_namespaces_and_short_prompts_never_collide() -> None:
    assert held_back([(0, [*COLD, 1], "lora-a"), (0, [*COLD, 2], "lora-b")]) == [False, False]
    short = COLD[:31]
    assert held_back([(0, short, None), (0, short, None)]) == [False, False]  # a shared head under 32 tokens
