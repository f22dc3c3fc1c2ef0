"""`schedctl plan` end to end on a tiny workload: JSON output, the infeasible case, re-planning, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from schedctl.sim.profiles import config_dir

TINY = "gsp:num_groups=4,prompts_per_group=8,system_prompt_len=512,question_len=32,output_len=16"
BASE = ["plan", "--workload", TINY, "--rate", "50", "--num-requests", "64", "--model", "llama-3.2-1b",
        "--gpus", "l4,a100-80gb", "--policies", "fcfs,lpm", "--max-evaluations", "12"]


def schedctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from schedctl.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_plan_json_names_a_plan_within_the_catalog_limits(tmp_path: Path) -> None:
    shipped = tomllib.loads((config_dir() / "gpus.toml").read_text())
    catalog = tmp_path / "gpus.toml"
    catalog.write_text(tomli_w.dumps({"l4": {**shipped["l4"], "max_available": 1},
                                      "a100-80gb": {**shipped["a100-80gb"], "max_available": 2}}))
    out = schedctl(*BASE, "--catalog", str(catalog), "--slo", "ttft_s=0.05,tbt_s=0.02,attainment=0.9",
                   "--plot", str(tmp_path / "plan.png"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["feasible"] is True and report["method"] == "anneal"
    assert report["evaluations"] <= 12 and report["plans_in_space"] == (2 * 3 - 1) * 2
    for plan in [report["best"], *report["runners_up"]]:
        assert plan["plan"]["replicas"].get("l4", 0) <= 1 and plan["plan"]["replicas"].get("a100-80gb", 0) <= 2
    assert (tmp_path / "plan.png").read_bytes().startswith(b"\x89PNG")

    (tmp_path / "current.json").write_text(out.stdout)
    again = schedctl(*BASE, "--catalog", str(catalog), "--slo", "ttft_s=0.05,tbt_s=0.02,attainment=0.9",
                     "--rate", "100", "--from-plan", str(tmp_path / "current.json"), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["method"] == "replan"


def test_an_impossible_slo_exits_1_and_reports_the_closest_plan() -> None:
    out = schedctl(*BASE, "--slo", "ttft_s=0.00001,tbt_s=0.02")
    assert out.returncode == 1, out.stderr
    assert "INFEASIBLE" in out.stdout and "closest plan" in out.stdout.lower()
    as_json = schedctl(*BASE, "--slo", "ttft_s=0.00001,tbt_s=0.02", "--json")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["feasible"] is False and report["best"]["violation"] > 0
    # the soft form has an answer even so: the least cost + λ × penalty, marked as missing the SLO
    soft = schedctl(*BASE, "--slo", "ttft_s=0.00001,tbt_s=0.02", "--mode", "penalty", "--json")
    assert soft.returncode == 0 and json.loads(soft.stdout)["feasible"] is False


def test_bad_input_is_one_line_naming_the_field_and_exit_2() -> None:
    for args, needle in [
        (["--slo", "ttft_s=0.5,tbt=0.1"], "tbt"),
        (["--slo", "ttft_s=-1,tbt_s=0.1"], "ttft_s"),
        (["--slo", "ttft_s=0.5,tbt_s=0.1,attainment=1.5"], "attainment"),
        (["--gpus", "l4,b300"], "b300"),
        (["--router", "random"], "--router"),
    ]:
        out = schedctl(*BASE, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, out.stderr)
