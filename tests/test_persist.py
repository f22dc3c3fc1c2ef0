"""Learner state survives a sidecar restart: saved beside the decision log each tick, restored if compatible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schedctl.controller.core import ControllerParams
from schedctl.controller.decision_log import read_decisions
from schedctl.controller.persist import StateMismatch
from schedctl.controller.service import open_sidecar
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import parse_policy
from schedctl.sim.profiles import config_dir, load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.workloads.registry import make_requests

HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
GSP = "gsp:num_groups=256,system_prompt_len=4096"
# rate buckets: a fresh engine's first window (empty queue) falls in the context the first run learned in
RATE_BUCKETS = {"learner": "ucb1", "learner_params": {"exploration": 0.3}, "bucketer": {
    "rate_thresholds_rps": [6.0, 24.0], "queue_thresholds": [], "share_thresholds": [0.6]}}
PARAMS = ControllerParams(guard={"min_dwell_ticks": 1, "explore_when_slo_met": True},
                          tuner={"learner_params": RATE_BUCKETS})  # type: ignore[arg-type]


def sim(seed: int = 2) -> SimAdapter:
    return SimAdapter(new_engine(HW, parse_policy("klpm:4")), make_requests(GSP, 9.0, duration_s=900, seed=seed), 10.0)


def test_a_restarted_sidecar_resumes_with_its_learned_arm_means(tmp_path: Path) -> None:
    state = tmp_path / "d.state.json"
    ad = sim()
    svc, _ = open_sidecar(PARAMS, ad, run_id="first", clock=lambda: ad.now_s, log_path=tmp_path / "d.jsonl",
                          state_path=state)
    for _ in range(30):
        svc.tick()
    learned, target = svc.controller.ktuner.stats, svc.controller.target
    assert sum(s.count for arms in learned.values() for s in arms.values()) >= 5  # (it did learn something)
    svc.close()
    assert svc.resumed is None and json.loads(state.read_text())["tick_id"] == 30

    ad2 = sim(seed=3)
    dwell = PARAMS.model_copy(update={"guard": PARAMS.guard.model_copy(update={"min_dwell_ticks": 4})})
    again, _ = open_sidecar(dwell, ad2, run_id="second", clock=lambda: ad2.now_s, log_path=tmp_path / "d.jsonl",
                            state_path=state)
    assert again.resumed is not None and "resumed first at tick 30" in again.resumed
    assert again.controller.ktuner.stats == learned and again.controller.target == target
    first = again.tick()
    assert first.policy == target and first.push  # the learned policy, pushed to the new engine at once
    assert first.reason == "guard" and first.rule == "dwell"  # (guard settings may differ between runs)
    ctx = first.learner.context
    assert ctx is not None and ctx in learned
    shown = {arm: (s.count, round(s.mean, 4)) for arm, s in learned[ctx].items() if arm != first.learner.credited}
    assert len(shown) >= 2
    logged_arms = {a: (int(v["n"]), round(v["mean"], 4)) for a, v in first.learner.arms.items() if a in shown}
    assert logged_arms == shown  # the decision log shows the learned means from the first tick on
    again.close()
    logged, _ = read_decisions(tmp_path / "d.jsonl")
    assert [d.decision_id for d in logged[29:31]] == ["first:30", "second:1"]

    fresh, _ = open_sidecar(PARAMS, sim(), run_id="third", clock=lambda: 0.0, state_path=state, fresh=True)
    assert fresh.resumed is None and fresh.controller.ktuner.stats == {}
    fresh.close()


def test_a_state_from_other_settings_is_refused_naming_the_setting(tmp_path: Path) -> None:
    state = tmp_path / "d.state.json"
    ad = sim()
    svc, _ = open_sidecar(PARAMS, ad, run_id="a", clock=lambda: ad.now_s, state_path=state)
    svc.tick()
    svc.close()
    other = PARAMS.model_copy(update={"tuner": PARAMS.tuner.model_copy(update={"arms": [1, 2, 4, "inf"]})})
    with pytest.raises(StateMismatch, match=r"tuner\.arms: saved \[1, 2, 4, 8, 'inf'\]"):
        open_sidecar(other, sim(), run_id="b", clock=lambda: 0.0, state_path=state)
    state.write_text("{not json")
    with pytest.raises(StateMismatch, match="not JSON"):
        open_sidecar(PARAMS, sim(), run_id="c", clock=lambda: 0.0, state_path=state)


def test_run_resumes_refuses_other_settings_and_starts_over_with_fresh(tmp_path: Path) -> None:
    env = {**os.environ, "SCHEDCTL_LOG__PATH": str(tmp_path / "d.jsonl"), "SCHEDCTL_API__ENABLED": "false",
           "SCHEDCTL_LOG__FSYNC": "false"}

    def run(*extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from schedctl.cli import main; main()", "run", "--config",
                               str(config_dir() / "sidecar.sim.toml"), "--fast", "--no-compare", "--ticks", "8",
                               *extra], env={**env, **more_env}, capture_output=True, text=True, timeout=300)

    first = run()
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "d.state.json").exists() and "learner state" not in first.stderr
    second = run()
    assert second.returncode == 0 and "learner state: resumed" in second.stderr and "at tick 8" in second.stderr
    refused = run(SCHEDCTL_TUNER__ARMS='[1, 2, "inf"]')
    assert refused.returncode == 2 and "tuner.arms" in refused.stderr and "--fresh" in refused.stderr
    assert "Traceback" not in refused.stderr
    over = run("--fresh", SCHEDCTL_TUNER__ARMS='[1, 2, "inf"]')
    assert over.returncode == 0 and "learner state" not in over.stderr
