"""`sweep --rates auto` (bench/sweep.py): from light load to clearly past the knee of the chosen workload, so that
where the order matters the policies part."""

from __future__ import annotations

import pytest

from schedctl.bench.sweep import auto_rates, sweep
from schedctl.cli import common
from schedctl.cli.sim import SWEEP_WORKLOAD
from schedctl.policies.spec import FCFSSpec, LPMSpec
from schedctl.workloads.registry import parse_workload

N = 600  # requests per run


@pytest.mark.parametrize("workload", [SWEEP_WORKLOAD, "gsp"])
def test_auto_rates_run_from_light_load_to_past_saturation(workload: str) -> None:
    spec = parse_workload(workload)
    hw = common.hardware("h100-sxm", "llama-3.1-8b", None, None)
    cfg = common.engine_config(8192, 1024)
    rates = auto_rates(spec, hw, cfg, N, 0)
    assert rates == sorted(rates) and len(rates) >= 8
    rows = sweep(spec, [rates[0], rates[-1]], [FCFSSpec(), LPMSpec()], hw, cfg, N, [0])
    by = {(r.rate, r.policy): r for r in rows}
    for pol in ("fcfs", "lpm"):
        light, past = by[(rates[0], pol)], by[(rates[-1], pol)]
        assert light.throughput_rps > 0.8 * rates[0]  # light: the engine keeps up
        assert past.throughput_rps < 0.9 * rates[-1]  # past the knee: it cannot
        assert past.ttft_p99_s > 5 * light.ttft_p99_s
    if workload == SWEEP_WORKLOAD:  # more prefix than the cache holds: past the knee, LPM's reuse pays
        assert by[(rates[-1], "fcfs")].ttft_p99_s > 1.3 * by[(rates[-1], "lpm")].ttft_p99_s
