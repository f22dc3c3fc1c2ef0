"""RunningSet: the one owner of the decoding requests' KV and remaining-output sums and the reserve share."""

from __future__ import annotations

import pytest

from schedctl.sim.engine import EngineConfig, _Live
from schedctl.sim.running import RunningSet
from schedctl.workloads.types import Request


def live(seq: int, prompt_len: int = 10, output_len: int = 5) -> _Live:
    return _Live(Request(request_id=seq, arrival_s=0.0, prompt=tuple(range(prompt_len)), output_len=output_len), seq,
                 False)


def test_join_advance_leave_keep_the_sums() -> None:
    rs = RunningSet(EngineConfig(new_token_ratio=0.2, token_ratio_decay_per_step=0.01, retract_token_ratio=0.9))
    a, b = live(0), live(1, prompt_len=20)
    rs.join(a, 10, 5)
    rs.join(b, 20, 5)
    assert (len(rs), rs.ctx_tokens, rs.remaining_tokens) == (2, 30, 10)
    rs.advance(3, 2)  # 3 steps of both: 6 tokens of KV more, 6 outputs fewer
    assert (rs.ctx_tokens, rs.remaining_tokens) == (36, 4)
    assert rs.newest() is b
    rs.leave(b, 23, 2)
    assert (len(rs), rs.ctx_tokens, rs.remaining_tokens, rs.newest()) == (1, 13, 2, a)


def test_reserve_share_decays_rises_on_retraction_and_resets_when_idle_only_if_asked() -> None:
    rs = RunningSet(EngineConfig(new_token_ratio=0.2, token_ratio_decay_per_step=0.01, retract_token_ratio=0.9))
    assert rs.ratio == 0.2
    rs.retracted()
    rs.advance(10, 0)
    assert rs.ratio == pytest.approx(0.8)
    rs.advance(1000, 0)
    assert rs.ratio == 0.2  # the floor
    rs.retracted()
    rs.idle()
    assert rs.ratio == 0.9  # the default engine keeps its share when idle
    sg = RunningSet(EngineConfig(new_token_ratio=0.1, init_new_token_ratio=0.7, token_ratio_decay_per_step=0.01))
    sg.advance(20, 1)
    assert sg.ratio == pytest.approx(0.5)
    sg.join(live(0), 10, 5)
    sg.idle()
    assert sg.ratio == pytest.approx(0.5)  # not idle while a request decodes
    sg.leave(live(0), 10, 5)
    sg.idle()
    assert sg.ratio == 0.7


def test_under_sglangs_scheduler_a_retraction_sets_sglangs_estimate_from_what_still_runs() -> None:
    """estimate_new_token_ratio_after_retract: (decoded + 20 per request) / (max new tokens + 1), capped at 1 —
    lower than the share before it when little has been decoded, unlike the idealised engine's fixed 0.9."""
    cfg = dict(new_token_ratio=0.1, init_new_token_ratio=0.7, token_ratio_decay_per_step=0.0)
    for sglang, expected in ((True, (2 * 20 + 2 * 20) / (2 * 1000 + 1)), (False, 0.9)):
        rs = RunningSet(EngineConfig.model_validate({**cfg, "sglang_lpm": sglang}))
        a, b, c = (live(i, output_len=1000) for i in range(3))
        for x in (a, b, c):
            rs.join(x, 10, 1000)
        rs.advance(20, 3)  # 20 tokens each
        rs.leave(c, 30, 980)  # c is retracted
        rs.retracted()
        assert rs.ratio == pytest.approx(expected)
    rs = RunningSet(EngineConfig.model_validate({**cfg, "sglang_lpm": True}))
    d = live(3, output_len=10)
    rs.join(d, 10, 10)
    rs.advance(9, 1)
    rs.retracted()
    assert rs.ratio == 1.0  # capped
