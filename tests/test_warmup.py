"""Warm-up out of the summary: `simulate`/`sweep --warmup-s` leave requests that arrived early out of every
figure, computed the same way as `schedctl load --warmup-s` (``records.serving_figures``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from schedctl.bench.sweep import sweep
from schedctl.policies.spec import LPMSpec
from schedctl.sim.engine import EngineConfig
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.records import TBTHistogram
from schedctl.sim.run import Hardware, simulate
from schedctl.workloads.registry import make_requests, parse_workload
from schedctl.workloads.types import Request

HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))


def reqs(n: int = 400, rate: float = 20.0) -> list[Request]:
    return list(make_requests(parse_workload("gsp"), rate, "poisson", num_requests=n, seed=3))


def test_requests_arriving_in_the_warm_up_are_left_out_of_every_figure() -> None:
    warm_s = 5.0
    engine, s = simulate(reqs(), LPMSpec(), HW, warmup_s=warm_s)
    rows = [engine.completed.row(i) for i in range(len(engine.completed))]
    kept = [r for r in rows if r.arrival_s >= warm_s]
    assert 0 < len(kept) < len(rows)
    assert (s.requests, s.warmup_excluded, s.warmup_s) == (len(kept), len(rows) - len(kept), warm_s)
    ttft = np.array([r.ttft_s for r in kept])
    assert s.ttft_p99_s == pytest.approx(float(np.quantile(ttft, 0.99)))
    assert s.ttft_p50_s == pytest.approx(float(np.quantile(ttft, 0.5)))
    gaps = [g for r in kept for g in r.tbt_s()]
    assert s.tbt_p99_s == pytest.approx(float(np.quantile(gaps, 0.99)))
    assert s.cache_hit_rate == pytest.approx(sum(r.cached_tokens for r in kept) / sum(r.prompt_tokens for r in kept))
    span = max(r.finish_s for r in kept) - min(r.arrival_s for r in kept)
    assert s.throughput_rps == pytest.approx(len(kept) / span)


def test_without_warm_up_the_summary_is_the_whole_run() -> None:
    engine, s = simulate(reqs(), LPMSpec(), HW)
    assert s.warmup_excluded == 0 and s.requests == len(engine.completed)
    assert s.cache_hit_rate == engine.cache.hit_rate
    assert s.tbt_p99_s == engine.tbt.quantile(0.99)
    # the histogram and the exact gaps agree to the histogram's resolution (1% buckets)
    _engine2, s2 = simulate(reqs(), LPMSpec(), HW, warmup_s=1e-12)
    assert isinstance(engine.tbt, TBTHistogram)
    assert s2.requests == s.requests and s2.tbt_p99_s == pytest.approx(s.tbt_p99_s, rel=0.02)
    assert s2.ttft_p99_s == s.ttft_p99_s


def test_sweep_passes_the_warm_up_to_every_run() -> None:
    rows = sweep(parse_workload("gsp"), [20.0], [LPMSpec()], HW, EngineConfig(), 300, [0], warmup_s=4.0)
    _e, s = simulate(make_requests(parse_workload("gsp"), 20.0, "poisson", num_requests=300, seed=0), LPMSpec(), HW,
                     warmup_s=4.0)
    assert rows[0].warmup_s == 4.0 and rows[0].requests == s.requests
    assert rows[0].ttft_p99_s == s.ttft_p99_s


def test_simulate_cli_reports_the_warm_up_and_refuses_a_negative_one() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "schedctl", "simulate", "--num-requests", "200", "--rate", "20",
                               *args], capture_output=True, text=True, timeout=300)

    proc = run("--warmup-s", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["warmup_s"] == 3.0 and obj["warmup_excluded"] > 0
    assert obj["requests"] + obj["warmup_excluded"] == 200
    bad = run("--warmup-s", "-1")
    assert bad.returncode == 2 and "--warmup-s" in bad.stderr
