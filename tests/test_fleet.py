"""Slow: `sim serve` agrees with `simulate` at a time scale; a sidecar drives one over HTTP; a fleet of two behind
SGLang's real router (needs .venv-router: scripts/setup-router.sh; skipped without it) gets traffic on both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schedctl.loadgen import LoadConfig, retime, run_load
from schedctl.policies.spec import parse_policy
from schedctl.sim.engine import EngineConfig
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.simserve.agreement import measure
from schedctl.simserve.fleet import Fleet, FleetConfig, RouterMissing, router_python
from schedctl.simserve.procs import free_port, start_replica
from schedctl.workloads.registry import make_requests, parse_arrival, parse_rate, parse_workload

pytestmark = pytest.mark.slow


def _requests(n: int, rate: str, seed: int = 0):
    return list(make_requests(parse_workload("gsp:output_len=32"), parse_rate(rate), parse_arrival("poisson"), n,
                              None, seed))


@pytest.mark.timeout(120)
def test_load_against_sim_serve_gives_simulate_s_ttfts(tmp_path: Path):
    """At --time-scale 4, the client's TTFT quantiles × 4 are those of `simulate` on the trace as sent, within
    25% + 0.1 s (the HTTP round trip and the driver's wake-ups, × 4, on a shared machine)."""
    scale, policy = 4.0, parse_policy("klpm:4")
    hw = Hardware(gpu=load_gpu("a100-80gb"), model=load_model("llama-3.1-8b"))
    proc = start_replica("replica", free_port(), tmp_path, ["--gpu", "a100-80gb", "--policy", "klpm:4",
                                                              "--time-scale", "4"])
    try:
        r = measure(_requests(120, "12"), proc.url or "", scale, policy, hw, EngineConfig())
    finally:
        proc.stop()
    assert r.errors == 0
    for served, ref in ((r.served.p50_s, r.simulated_as_sent.p50_s), (r.served.p99_s, r.simulated_as_sent.p99_s)):
        assert abs(served - ref) <= 0.25 * ref + 0.1, r.model_dump()
    assert r.simulated_as_sent.p99_s > 0.5  # queueing: the comparison is not of near-zero figures


@pytest.mark.timeout(180)
def test_a_sidecar_per_replica_behind_sglang_s_router(tmp_path: Path):
    try:
        router_python()
    except RouterMissing as exc:
        pytest.skip(str(exc))
    cfg = FleetConfig(replicas=2, time_scale=4, sidecars=True, initial_policy="klpm:2", tick_interval_s=0.5)
    with Fleet(cfg, tmp_path) as fleet:
        load = run_load(retime(_requests(120, "16"), time_scale=1 / cfg.time_scale),
                        LoadConfig(url=fleet.url, vocab_size=2**31))
        summaries = fleet.summaries()
        infos = fleet.server_infos()
    assert load.summary.requests == 120 and load.summary.errors == 0
    assert all(s["requests"] > 10 for s in summaries), summaries  # the router sent traffic to both
    assert sum(s["requests"] for s in summaries) == 120
    for i, info in enumerate(infos):
        decisions = [json.loads(line) for line in (tmp_path / f"decisions-{i}.jsonl").read_text().splitlines()]
        pushed = [d for d in decisions if d["applied"]]
        assert pushed, decisions  # the sidecar pushed through the replica's /set_internal_state
        state = info["internal_states"][0]
        assert state["schedctl"]["policy"] == pushed[-1]["policy_label"]  # the plugin's readback
        assert state["schedctl_sim"]["active_policy"] == pushed[-1]["policy_label"]  # and the engine runs it
