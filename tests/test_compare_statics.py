"""What `schedctl run` compares the adaptive run with: every k arm, or in deadline mode (SLAI) its policy with the
knob held at the tuner's minimum, initial and maximum; each static run reports P99 TBT too (what Θ trades)."""

from __future__ import annotations

import math
from pathlib import Path

from schedctl.bench.adaptive import RunJob, run_job, static_policies
from schedctl.bench.scenarios import Phase, Scenario, Stream
from schedctl.cli import common
from schedctl.policies.spec import SLAISpec, parse_policy
from schedctl.settings import load_settings

CONFIG = Path(__file__).resolve().parents[1] / "config"


def test_deadline_mode_is_compared_with_its_own_policy_at_fixed_knobs() -> None:
    params = load_settings(CONFIG / "sidecar.slai.toml").controller_params()
    assert params.deadline is not None
    statics = [parse_policy(p) for p in static_policies(params)]
    assert all(isinstance(s, SLAISpec) for s in statics)
    t = params.deadline.tuner
    assert sorted(s.theta_low for s in statics if isinstance(s, SLAISpec)) == sorted(
        {t.knob_min, t.knob_initial, t.knob_max})
    k_params = load_settings(CONFIG / "sidecar.sim.toml").controller_params()
    assert static_policies(k_params)[0] == "fcfs" and "lpm" in static_policies(k_params)


def test_a_static_run_reports_its_p99_tbt() -> None:
    params = load_settings(CONFIG / "sidecar.slai.toml").controller_params()
    scenario = Scenario(name="short", phases=[Phase(duration_s=40, streams=[Stream(workload="chat", rate="8")])])
    job = RunJob(scenario=scenario, seed=0, policy=static_policies(params)[0], controller=params,
                 hardware=common.hardware("h100-sxm", "llama-3.1-8b", None, None), drain_limit_s=60)
    result = run_job(job)
    assert result.requests > 0 and math.isfinite(result.tbt_p99_s) and result.tbt_p99_s > 0
