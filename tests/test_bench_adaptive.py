"""Scenarios and the adaptive benchmark: same loop for every policy, ratios, the CLI's JSON rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from schedctl.bench.adaptive import ADAPTIVE, SWITCHING, RunJob, RunResult, run_job, summarize
from schedctl.bench.scenarios import Scenario, load_scenarios, scenario_requests
from schedctl.controller.core import ControllerParams
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.tokens import SYNTHETIC_TOKEN_BASE

HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
A = "gsp:num_groups=4,system_prompt_len=64"
B = "tree:num_instructions=2,profiles_per_instruction=2,histories_per_profile=2,instruction_len=64"


def scenario(*phases: tuple[float, list[tuple[str, str]]], name: str = "t") -> Scenario:
    return Scenario(name=name, phases=[{"duration_s": d, "streams": [{"workload": w, "rate": r} for w, r in s]}
                                       for d, s in phases])  # type: ignore[misc]


def test_shipped_scenarios_load_and_cover_the_issue_list() -> None:
    sc = load_scenarios()
    kinds = {s.kind for s in sc.values()}
    assert kinds == {"stationary", "non-stationary"}
    for needed in ("stationary-low", "stationary-mid", "stationary-high", "load-step", "ramp", "diurnal", "bursts",
                   "prefix-shift"):
        assert needed in sc


def test_phases_chain_in_time_with_unique_ids_and_are_seeded() -> None:
    sc = scenario((60, [(A, "5")]), (60, [(A, "5"), (B, "5")]))
    reqs = list(scenario_requests(sc, seed=3))
    assert [r.request_id for r in reqs] == list(range(len(reqs)))
    times = [r.arrival_s for r in reqs]
    assert times == sorted(times) and times[-1] < 120
    assert any(t > 60 for t in times) and any(t < 60 for t in times)
    again = list(scenario_requests(sc, seed=3))
    assert all(a.prompt == b.prompt and a.arrival_s == b.arrival_s for a, b in zip(reqs, again, strict=True))
    assert [r.arrival_s for r in scenario_requests(sc, seed=4)] != times


def test_token_namespaces_share_prefixes_within_a_workload_and_never_across() -> None:
    sc = scenario((60, [(A, "5")]), (60, [(A, "5"), (B, "5")]))
    reqs = list(scenario_requests(sc, seed=0))
    a_heads = {r.prompt[0] for r in reqs if r.arrival_s < 60}  # the first token of each of A's prefixes
    later = [r for r in reqs if r.arrival_s >= 60]
    same = [r for r in later if r.prompt[0] in a_heads]
    other = [r for r in later if r.prompt[0] not in a_heads]
    assert same and other  # A keeps its prefixes in phase 2; B (whose own ids also start at 1) got its own
    for a in [r for r in reqs if r.arrival_s < 60][:20]:
        for b in other[:20]:
            assert not set(np.frombuffer(a.prompt, dtype=np.int64)) & set(np.frombuffer(b.prompt, dtype=np.int64))
    uniques = [np.frombuffer(r.prompt, dtype=np.int64)[-5:].tolist() for r in reqs]
    flat = [t for u in uniques for t in u]
    assert all(t >= SYNTHETIC_TOKEN_BASE for t in flat)
    assert len(flat) == len(set(flat))  # unique question ids never collide across phases and streams


def test_static_and_adaptive_runs_share_the_loop_and_report_every_request() -> None:
    sc = scenario((120, [("gsp:num_groups=64,system_prompt_len=2048", "6")]))
    params = ControllerParams()
    static = run_job(RunJob(scenario=sc, seed=0, policy="lpm", controller=params, hardware=HW, tick_interval_s=10))
    adaptive = run_job(RunJob(scenario=sc, seed=0, policy=ADAPTIVE, controller=params, hardware=HW,
                              tick_interval_s=10, keep_timeline=True))
    n = len(list(scenario_requests(sc, seed=0)))
    assert static.requests == adaptive.requests == n and static.unserved == adaptive.unserved == 0
    assert static.reasons == {"pinned": static.ticks} and static.changes == 0
    assert ADAPTIVE not in static.reasons and "pinned" not in adaptive.reasons
    assert len(adaptive.timeline) == adaptive.ticks and static.ttft_p99_s > 0


def test_summarize_takes_means_over_seeds_and_ratios_against_the_best_static() -> None:
    sc = Scenario(name="s", kind="stationary", phases=[{"duration_s": 1, "streams": [{"workload": A, "rate": "1"}]}])

    def r(policy: str, seed: int, p99: float) -> RunResult:
        return RunResult(scenario="s", seed=seed, policy=policy, requests=1, unserved=0, ttft_p50_s=0,
                         ttft_p99_s=p99, ticks=1, changes=0, reasons={})

    results = [r(ADAPTIVE, 0, 9), r(ADAPTIVE, 1, 11), r("fcfs", 0, 40), r("fcfs", 1, 60), r("klpm:4", 0, 8),
               r("klpm:4", 1, 12), r("lpm", 0, 20), r("lpm", 1, 20)]
    rows = {row.policy: row for row in summarize([sc], results, ["fcfs", "klpm:4", "lpm"])}
    ad = rows[ADAPTIVE]
    assert ad.ttft_p99_s == 10 and ad.best_static == "klpm:4"
    assert ad.ratio_to_best_static == pytest.approx(1.0)
    assert ad.ratio_to_fcfs == pytest.approx(0.2) and ad.ratio_to_lpm == pytest.approx(0.5)
    assert rows["fcfs"].ratio_to_best_static == pytest.approx(5.0)


SCENARIOS = """
[scenarios.tiny]
kind = "stationary"
phases = [{ duration_s = 60, streams = [{ workload = "gsp:num_groups=8,system_prompt_len=256", rate = "5" }] }]
"""


@pytest.mark.timeout(120)
def test_cli_json_rows(tmp_path: Path) -> None:
    f = tmp_path / "scenarios.toml"
    f.write_text(SCENARIOS)
    out = subprocess.run(
        [sys.executable, "-c", "from schedctl.cli import main; main()", "bench", "adaptive", "--scenarios-file",
         str(f), "--seeds", "1", "--jobs", "1", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["policy"] for r in rows} == {ADAPTIVE, SWITCHING, "fcfs", "klpm:2", "klpm:4", "klpm:8", "lpm"}
    for r in rows:
        assert {"scenario", "policy", "ttft_p99_s", "ratio_to_best_static", "ratio_to_fcfs", "ratio_to_lpm"} <= set(r)
        assert r["scenario"] == "tiny"
    assert min(r["ratio_to_best_static"] for r in rows if r["policy"] not in (ADAPTIVE, SWITCHING)) == 1.0
    oracle = next(r for r in rows if r["policy"] == SWITCHING)  # one phase: the best static run
    assert oracle["ratio_to_switching"] == 1.0 and oracle["ratio_to_best_static"] == 1.0
    assert 0 <= oracle["attainment"] <= 1 and oracle["schedule"] == [oracle["best_static"]]


def test_warmup_leaves_the_first_requests_out_of_every_figure() -> None:
    sc = scenario((60, [("gsp:num_groups=64,system_prompt_len=2048", "6")]))
    job = RunJob(scenario=sc, seed=0, policy="fcfs", controller=ControllerParams(), hardware=HW, tick_interval_s=10)
    cold, warm = run_job(job), run_job(job.model_copy(update={"warmup_s": 20.0}))
    late = [r for r in scenario_requests(sc, seed=0) if r.arrival_s >= 20.0]
    assert cold.requests == len(list(scenario_requests(sc, seed=0))) and warm.requests == len(late)
    assert warm.ttft_p99_s != cold.ttft_p99_s
