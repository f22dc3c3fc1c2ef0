"""The hindsight switching oracle of `schedctl bench adaptive` (bench/switching.py) and trace streams in scenarios."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_bench_adaptive import HW, A, scenario

from schedctl.bench.adaptive import SWITCHING, RunJob, RunResult, run_job
from schedctl.bench.scenarios import load_scenarios, scenario_requests
from schedctl.bench.switching import oracle_jobs, phase_schedule, run_with_oracle
from schedctl.controller.core import ControllerParams
from schedctl.files import InputFileError
from schedctl.workloads.trace import read_trace

STATICS = ["fcfs", "klpm:4", "lpm"]


def result(policy: str, p99: float, phases: list[float], seed: int = 0) -> RunResult:
    return RunResult(scenario="t", seed=seed, policy=policy, requests=10, unserved=0, ttft_p50_s=0.1,
                     ttft_p99_s=p99, ticks=1, changes=0, reasons={}, phase_ttft_p99_s=phases)


def test_each_phase_takes_the_static_policy_with_the_lowest_p99_there() -> None:
    runs = {"fcfs": result("fcfs", 9, [1.0, 9.0, math.nan]), "klpm:4": result("klpm:4", 5, [2.0, 5.0, math.nan]),
            "lpm": result("lpm", 7, [3.0, 4.0, math.nan])}
    assert phase_schedule(STATICS, runs, 3) == ("fcfs", "lpm", "fcfs")


def test_a_schedule_that_switches_is_run_and_one_that_does_not_is_the_static_run() -> None:
    sc2 = scenario((60, [(A, "2")]), (60, [(A, "2")]))
    jobs = [RunJob(scenario=sc2, seed=s, policy=p, controller=ControllerParams(), hardware=HW)
            for s in (0, 1) for p in STATICS]
    results = [result("fcfs", 3, [1, 3], 0), result("klpm:4", 2, [2, 2], 0), result("lpm", 4, [3, 4], 0),
               result("fcfs", 3, [1, 1], 1), result("klpm:4", 2, [2, 2], 1), result("lpm", 4, [3, 4], 1)]
    to_run, known = oracle_jobs(jobs, results, STATICS)
    assert [(j.seed, j.schedule, j.policy) for j in to_run] == [(0, ("fcfs", "klpm:4"), SWITCHING)]
    assert [(r.seed, r.schedule, r.policy, r.ttft_p99_s) for r in known] == [(1, ["fcfs", "fcfs"], SWITCHING, 3)]


def test_the_oracle_pushes_each_phases_policy_at_the_phase_boundary() -> None:
    sc = scenario((60, [(A, "2")]), (60, [(A, "2")]), (60, [(A, "2")]))
    job = RunJob(scenario=sc, seed=0, policy=SWITCHING, controller=ControllerParams(), hardware=HW,
                 schedule=("fcfs", "lpm", "klpm:4"), keep_timeline=True)
    res = run_job(job)
    by_time = {round(t.time_s): t.policy for t in res.timeline}
    assert [by_time[t] for t in (10, 50, 60, 110, 120, 170)] == ["fcfs", "fcfs", "lpm", "lpm", "klpm:4", "klpm:4"]
    assert len(res.phase_ttft_p99_s) == 3 and res.schedule == ["fcfs", "lpm", "klpm:4"]


def test_the_oracle_is_never_worse_than_the_seeds_best_static_policy() -> None:
    sc = scenario((60, [(A, "30")]), (60, [("gsp:num_groups=64,system_prompt_len=2048", "40")]))
    jobs = [RunJob(scenario=sc, seed=0, policy=p, controller=ControllerParams(), hardware=HW) for p in STATICS]
    results = run_with_oracle(jobs, STATICS, workers=1)
    oracle = next(r for r in results if r.policy == SWITCHING)
    assert oracle.ttft_p99_s <= min(r.ttft_p99_s for r in results if r.policy in STATICS)
    assert oracle.schedule is not None and len(oracle.schedule) == 2


def test_a_trace_stream_replays_the_trace_time_scaled_from_the_phase_start() -> None:
    sc = load_scenarios()["mooncake-x4"]
    assert not sc.seeded
    reqs = list(scenario_requests(sc, seed=0))
    trace = list(read_trace(sc.phases[0].streams[0].trace or ""))
    assert len(reqs) == len(trace) == 3993
    assert [r.arrival_s for r in reqs[:50]] == [4 * r.arrival_s for r in trace[:50]]
    assert [r.prompt for r in reqs[:50]] == [r.prompt for r in trace[:50]]


def test_a_trace_stream_names_its_field_when_the_file_is_missing_and_refuses_a_workload_beside(
        tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[scenarios.x]\nphases = [{ duration_s = 10, streams = [{ trace = "nope.jsonl" }] }]\n')
    with pytest.raises(InputFileError, match=r"scenarios\.x\.phases\[0\]\.streams\[0\]\.trace: no such file"):
        load_scenarios(f)
    f.write_text('[scenarios.x]\nphases = [{ duration_s = 10, streams = [{ trace = "t", workload = "gsp", '
                 'rate = "1" }] }]\n')
    with pytest.raises(InputFileError, match="give trace, or workload and rate"):
        load_scenarios(f)


def test_a_trace_in_a_later_phase_starts_at_that_phase_and_is_cut_to_its_length(tmp_path: Path) -> None:
    trace = Path(__file__).resolve().parents[1] / "config" / "traces" / "mooncake-synthetic.jsonl"
    f = tmp_path / "s.toml"
    f.write_text(f'[scenarios.x]\nphases = [{{ duration_s = 5, streams = [{{ trace = "{trace}", time_scale = 0.01 }}] '
                 f'}}, {{ duration_s = 3, streams = [{{ trace = "{trace}", time_scale = 0.01 }}] }}]\n')
    reqs = list(scenario_requests(load_scenarios(f)["x"]))
    first = [r.arrival_s for r in read_trace(trace) if r.arrival_s * 0.01 < 5]
    second = [r for r in reqs if r.arrival_s >= 5]
    assert len(reqs) - len(second) == len(first)
    assert second and min(r.arrival_s for r in second) == 5.0 and max(r.arrival_s for r in second) < 8


@pytest.mark.slow
def test_on_prefix_shift_the_greedy_schedule_loses_to_a_static_policy_and_the_oracle_keeps_the_better() -> None:
    # seed 0: some phase-by-phase schedule of winners leaves queues behind and loses to one static policy
    sc = load_scenarios()["prefix-shift"]
    statics = ["fcfs", "klpm:2", "klpm:4", "klpm:8", "lpm"]
    jobs = [RunJob(scenario=sc, seed=0, policy=p, controller=ControllerParams(), hardware=HW) for p in statics]
    results = run_with_oracle(jobs, statics, workers=2)
    oracle = next(r for r in results if r.policy == SWITCHING)
    assert oracle.ttft_p99_s == min(r.ttft_p99_s for r in results if r.policy in statics)
