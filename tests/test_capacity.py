"""Capacity search: the keep-up check, the SLO check per class, the bisection's bracket, and the command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from schedctl.bench.capacity import CapacitySLO, RunFigures, backlog_growth, capacity_search, point
from schedctl.policies.spec import SarathiSpec, SLAISpec
from schedctl.sim.engine import EngineConfig
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.workloads.registry import parse_workload

HW = Hardware(gpu=load_gpu("rtx-6000-ada"), model=load_model("mistral-7b"))
SLO = CapacitySLO()


def test_backlog_does_not_grow_when_the_server_keeps_up_and_grows_with_the_excess_when_it_does_not():
    arrivals = np.arange(1000) / 10.0  # 10 req/s
    kept_up = backlog_growth(arrivals, arrivals + 3.0)  # every request takes 3 s
    assert abs(kept_up) < 0.01
    served_at_8 = np.arange(1000) / 8.0 + 3.0  # the server finishes 8 req/s, in order
    assert backlog_growth(arrivals, served_at_8) == pytest.approx(0.2, abs=0.01)  # (10 - 8) / 10


def _figures(ttft_s: float, tbt: dict[str, float], growth: float = 0.0) -> RunFigures:
    return RunFigures(ttft_q_s=ttft_s, tbt_q_s=tbt, tbt_p99_s=max(tbt.values()), ttft_p50_s=ttft_s,
                      backlog_growth=growth, requests=100)


@pytest.mark.parametrize(
    ("figures", "meets"),
    [
        ([_figures(0.4, {"strict": 0.09, "relaxed": 0.45})], True),
        ([_figures(0.6, {"strict": 0.09, "relaxed": 0.45})], False),  # TTFT over the threshold
        ([_figures(0.4, {"strict": 0.11, "relaxed": 0.05})], False),  # the strict class misses its own SLO
        ([_figures(0.4, {"default": 0.25})], False),
        ([_figures(0.4, {"relaxed": 0.45}, growth=0.10)], False),  # the engine does not keep up
        ([_figures(0.3, {"strict": 0.05}), _figures(0.8, {"strict": 0.05})], False),  # the mean over seeds
        ([_figures(0.3, {"strict": 0.05}), _figures(0.6, {"strict": 0.05})], True),
    ],
)
def test_a_rate_meets_the_slo_only_if_every_figure_does(figures: list[RunFigures], meets: bool):
    assert point("p", 1.0, figures, SLO).meets_slo is meets


def test_slo_knobs_are_validated_naming_the_field():
    with pytest.raises(ValidationError, match="ttft_quantile"):
        CapacitySLO(ttft_quantile=1.5)
    with pytest.raises(ValidationError, match="tbt_strict_s"):
        CapacitySLO(tbt_strict_s=float("nan"))


def test_the_search_brackets_the_capacity_within_the_tolerance():
    workload = parse_workload("sharegpt:strict_fraction=0.2")
    tol = 0.1
    results = capacity_search([SarathiSpec(), SLAISpec()], workload, HW, EngineConfig(), SLO, seeds=[0],
                              num_requests=300, rel_tolerance=tol, max_steps=10)
    assert [r.policy for r in results] == ["sarathi", "slai"]
    for res in results:
        assert res.capacity_rps is not None and res.at_capacity is not None and res.at_capacity.meets_slo
        passed = [p.rate for p in res.points if p.meets_slo]
        failed = [p.rate for p in res.points if not p.meets_slo]
        assert max(passed) == res.capacity_rps
        assert failed and min(failed) > res.capacity_rps
        assert min(failed) - res.capacity_rps <= tol * res.capacity_rps + 1e-9
        assert res.points == sorted(res.points, key=lambda p: p.rate)
        assert set(res.at_capacity.tbt_q_s) == {"strict", "relaxed"}


def schedctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "schedctl", *args], capture_output=True, text=True, timeout=300)


def test_the_command_prints_json_and_writes_a_plot(tmp_path: Path):
    plot = tmp_path / "capacity.png"
    proc = schedctl("capacity", "--policies", "sarathi,slai:theta_low=3,token_budget=256", "--workload",
                    "sharegpt:strict_fraction=0.2", "--num-requests", "150", "--seeds", "1", "--tolerance", "0.3",
                    "--jobs", "1", "--plot", str(plot), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["policy"] for r in rows] == ["sarathi", "slai:token_budget=256,theta_low=3.0"]
    assert all(r["capacity_rps"] > 0 and r["points"] for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "must_say"),
    [
        (["--policies", "slai:theta_low=abc"], ["--policies", "knob 'theta_low'", "valid number"]),
        (["--policies", "slai:token_budget=-4"], ["knob 'token_budget'", "greater than or equal to 1"]),
        (["--policies", "slai:tbt_gold_s=1"], ["unknown knob 'tbt_gold_s'"]),
        (["--ttft-quantile", "2"], ["--ttft-quantile", "less than 1"]),
        (["--seeds", "0"], ["--seeds"]),
    ],
)
def test_bad_values_give_one_clear_line(args: list[str], must_say: list[str]):
    proc = schedctl("capacity", *args, "--num-requests", "50")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    for text in must_say:
        assert text in lines[0]
