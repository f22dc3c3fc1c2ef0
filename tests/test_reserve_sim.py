"""schedule_conservativeness changed while the embedded engine runs: SGLang's tracker rebuilt, the share rescaled."""

from __future__ import annotations

import numpy as np
import pytest

from schedctl.engine_adapter.base import ReserveKnob
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import parse_policy
from schedctl.sim.engine import SimEngine, sglang_engine_config
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.sim.running import RunningSet
from schedctl.workloads.registry import make_requests
from schedctl.workloads.types import Request

# the workload of benchmarks/conservativeness.py, smaller: long varied outputs over shared prefixes, a KV cache small
# enough that the reserve decides admission
HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"), kv_capacity_tokens=40_000)
GSP = ("gsp:num_groups=12,prompts_per_group=8,system_prompt_len=2048,question_len=128,output_len=1024,"
       "range_ratio=0.1")


def requests(n: int = 96, rate: float = 16.0) -> list[Request]:
    return list(make_requests(GSP, rate, "poisson", num_requests=n, seed=3))


def engine(c: float, reqs: list[Request]) -> SimEngine:
    eng = new_engine(HW, parse_policy("fcfs"), sglang_engine_config(c))
    eng.add_requests(reqs)
    return eng


def test_retune_rebuilds_sglangs_tracker_and_scales_the_share_as_the_plugin_does() -> None:
    rs = RunningSet(sglang_engine_config(1.0))
    assert rs.ratio == pytest.approx(0.7)
    rs.advance(300, 0)  # half way down: 0.7 - 300 * (0.7 - 0.098) / 600
    assert rs.ratio == pytest.approx(0.399)
    rs.retune(sglang_engine_config(0.5))  # init 0.35, min 0.049: the share scaled by 0.35 / 0.7
    assert rs.ratio == pytest.approx(0.1995)
    rs.advance(10_000, 0)
    assert rs.ratio == pytest.approx(0.049)  # the new floor
    rs.idle()
    assert rs.ratio == pytest.approx(0.35)  # the new init when idle
    rs.retune(sglang_engine_config(3.0))  # init min(2.1, 1) = 1: 0.35 * 1 / 0.35, clipped to [0.14, 1]
    assert rs.ratio == pytest.approx(1.0)
    rs.advance(600, 0)
    assert rs.ratio == pytest.approx(0.14)  # decays over 600 steps to 0.14 of init


def test_set_before_any_arrival_is_the_engine_built_with_that_value() -> None:
    reqs = requests()
    built = engine(0.3, reqs)
    built.run()
    switched = engine(1.0, reqs)
    switched.set_conservativeness(0.3)
    switched.run()
    assert switched.cfg == built.cfg
    assert np.array_equal(switched.completed.column("finish_s"), built.completed.column("finish_s"))
    assert switched.retractions == built.retractions


def test_set_while_running_changes_admission_from_the_next_batch() -> None:
    reqs = requests()
    runs = {}
    for new_c in (None, 0.1, 3.0):
        eng = engine(1.0, reqs)
        eng.run(until_s=4.0)
        before = eng.new_token_ratio
        if new_c is not None:
            eng.set_conservativeness(new_c)
            assert eng.cfg.schedule_conservativeness == new_c
            expected = min(1.0, max(eng.cfg.new_token_ratio, before * min(0.7 * new_c, 1) / 0.7))
            assert eng.new_token_ratio == pytest.approx(expected)
        eng.run(until_s=5.0)
        running = eng.running
        eng.run(until_s=8.0)
        runs[new_c] = (running, eng.retractions)
    assert runs[0.1][0] > runs[None][0] > runs[3.0][0]  # a smaller reserve admits more, a larger one fewer,
    assert runs[0.1][1] > runs[None][1] > runs[3.0][1]  # and more admitted now is more retracted later


def test_fixed_length_outputs_keep_the_whole_reserve_whatever_the_value() -> None:
    eng = SimEngine(sglang_engine_config(1.0, fixed_length_outputs=True), HW.step_model(), HW.kv_tokens())
    eng.set_conservativeness(0.1)
    assert eng.cfg.schedule_conservativeness == 0.1
    assert (eng.new_token_ratio, eng.cfg.new_token_ratio) == (1.0, 1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        eng.set_conservativeness(0.0)


def test_the_sim_adapter_reports_retractions_and_the_value_it_runs_and_sets_it() -> None:
    reqs = requests()
    ad = SimAdapter(engine(0.1, reqs), iter(reqs), 2.0)
    assert isinstance(ad, ReserveKnob)
    windows = [ad.observe() for _ in range(6)]
    assert [w.conservativeness for w in windows] == [0.1] * 6
    assert sum(w.retractions or 0 for w in windows) == ad.engine.retractions > 0
    readback = ad.set_conservativeness(2.0)
    assert readback["schedule_conservativeness"] == 2.0 and readback["new_token_ratio_init"] == 1.0
    assert readback["new_token_ratio_min"] == pytest.approx(0.14)
    assert ad.observe().conservativeness == 2.0
