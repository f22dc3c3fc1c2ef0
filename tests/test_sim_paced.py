"""The paced engine (sim/paced.py): the embedded engine fed requests one at a time at the caller's clock serves a
stream exactly as `simulate` does, and releases each token no earlier than its simulated time."""

from __future__ import annotations

import math

import pytest

from schedctl.policies.spec import parse_policy
from schedctl.sim.engine import EngineConfig
from schedctl.sim.paced import PacedEngine, Stream
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine, simulate
from schedctl.workloads.registry import make_requests, parse_arrival, parse_rate, parse_workload

HW = Hardware(gpu=load_gpu("a100-80gb"), model=load_model("llama-3.1-8b"))


def _requests(n: int = 120, rate: str = "12"):
    return list(make_requests(parse_workload("gsp:output_len=16,num_groups=8"), parse_rate(rate),
                              parse_arrival("poisson"), n, None, 3))


def _serve_paced(reqs, policy: str, step_s: float) -> tuple[dict[int, Stream], list[tuple[float, int, int]]]:
    """Drive a paced engine with a hand-set clock ticking every ``step_s``; arrivals at their exact times.
    Returns the streams by request id and every release as (clock, request id, tokens released so far)."""
    paced = PacedEngine(new_engine(HW, parse_policy(policy), EngineConfig(stream_tokens=True)))
    streams: dict[int, Stream] = {}
    releases: list[tuple[float, int, int]] = []
    now, i = 0.0, 0
    while i < len(reqs) or paced.open_streams:
        now += step_s
        while i < len(reqs) and reqs[i].arrival_s <= now:
            r = reqs[i]
            paced.advance(r.arrival_s)
            streams[r.request_id] = paced.submit(r.prompt, r.output_len, r.arrival_s)
            i += 1
        paced.advance(now)
        for s in paced.release(now):
            releases.append((now, s.request_id, s.released))
        assert now < 1e4, "the paced engine never finished"
    ids = {s.request_id: r.request_id for s, r in zip(streams.values(), reqs, strict=True)}
    return ({ids[k]: s for k, s in ((s.request_id, s) for s in streams.values())},
            [(t, ids[k], n) for t, k, n in releases])


@pytest.mark.parametrize("policy", ["fcfs", "klpm:4", "lpm"])
def test_paced_engine_serves_a_stream_as_simulate_does(policy):
    reqs = _requests()
    engine, _summary = simulate(reqs, parse_policy(policy), HW, EngineConfig(record_token_times=True))
    ref = {row.request_id: row for row in engine.completed.rows()}
    streams, _releases = _serve_paced(reqs, policy, step_s=0.007)
    assert set(streams) == set(ref)
    for rid, row in ref.items():
        s = streams[rid]
        assert s.finished and not s.aborted
        assert s.token_times_s == pytest.approx(row.token_times_s, abs=1e-9)
        assert s.cached_tokens == row.cached_tokens


def test_tokens_are_released_when_their_time_comes_not_before():
    reqs = _requests(40)
    streams, releases = _serve_paced(reqs, "klpm:4", step_s=0.005)
    for now, rid, n in releases:
        times = streams[rid].token_times_s
        assert times[n - 1] <= now  # nothing released early
        assert n == len(times) or times[n] > now  # and nothing due left behind
    assert len({n for _t, _r, n in releases}) > 1  # tokens came over several releases, not all at the end


def test_next_event_says_when_a_first_token_is_due():
    paced = PacedEngine(new_engine(HW, parse_policy("fcfs"), EngineConfig(stream_tokens=True)))
    assert paced.next_event_s() == (math.inf, math.inf)  # idle: nothing until a request comes
    s = paced.submit(list(range(1000, 1500)), 4, 10.0)
    paced.advance(10.0)
    assert paced.next_event_s()[0] == 10.0  # taken in, waiting: the prefill starts at the next advance
    paced.advance(10.001)
    first, _later = paced.next_event_s()
    assert 10.001 < first < 11.0  # the prefill (started at 10.0) ends then: its first token is due
    assert paced.release(first - 1e-9) == [] and s.released == 0
    assert paced.release(first) == [s] and s.released == 1 and s.first_token_s == first
    paced.advance(first + 1e-6)  # the first decode step runs
    _first, later = paced.next_event_s()
    assert first < later < math.inf  # its token is due at its end


def test_arrivals_must_not_go_back_in_time_and_the_engine_must_stream():
    paced = PacedEngine(new_engine(HW, parse_policy("fcfs"), EngineConfig(stream_tokens=True)))
    paced.submit([1, 2, 3], 2, 5.0)
    with pytest.raises(ValueError, match="before the previous one"):
        paced.submit([1, 2, 3], 2, 4.0)
    with pytest.raises(ValueError, match="stream_tokens"):
        PacedEngine(new_engine(HW, parse_policy("fcfs"), EngineConfig()))


def test_a_request_too_large_for_the_kv_cache_ends_aborted():
    hw = HW.model_copy(update={"kv_capacity_tokens": 256})
    paced = PacedEngine(new_engine(hw, parse_policy("fcfs"), EngineConfig(stream_tokens=True)))
    s = paced.submit(list(range(1000)), 4, 0.0)
    paced.advance(1.0)
    assert paced.release(1.0) == [s] and s.aborted and s.finished and s.released == 0
    assert paced.open_streams == 0
