"""How fast the embedded engine simulates: requests per second of wall time on a shared-prefix workload.

    python benchmarks/sim_speed.py                       # 1,000,000 gsp requests, LPM and FCFS
    python benchmarks/sim_speed.py --num-requests 200000 --policies lpm

Target (issue: foundation): 1,000,000 requests in under 60 s on a 2-core machine. The time includes generating
the workload. The rate is set to 60% of the engine's saturation throughput (measured first, on a burst), so
the run has realistic queueing and batching.
"""

from __future__ import annotations

import argparse
import time

from schedctl.bench.sweep import saturation_rps
from schedctl.policies.spec import parse_policy
from schedctl.sim.engine import EngineConfig
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, simulate
from schedctl.workloads.registry import make_requests, parse_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-requests", type=int, default=1_000_000)
    ap.add_argument("--workload", default="gsp")
    ap.add_argument("--policies", default="lpm,fcfs")
    ap.add_argument("--load", type=float, default=0.6, help="rate as a fraction of saturation throughput")
    args = ap.parse_args()
    hw = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
    spec = parse_workload(args.workload)
    cap = saturation_rps(spec, hw, EngineConfig(), 2000, seed=0)
    rate = args.load * cap
    print(f"workload {args.workload}, Llama-3.1-8B on H100 SXM; saturation {cap:.1f} req/s; rate {rate:.1f} req/s")
    for pol in args.policies.split(","):
        t0 = time.perf_counter()
        reqs = make_requests(spec, rate, "poisson", num_requests=args.num_requests, seed=1)
        engine, s = simulate(reqs, parse_policy(pol), hw)
        wall = time.perf_counter() - t0
        print(f"{pol:8s} {s.requests:>9,} requests ({s.sim_duration_s / 3600:.1f} simulated hours) in {wall:6.1f} s "
              f"wall = {s.requests / wall:>8,.0f} requests/s   [1M in {1e6 / (s.requests / wall):.0f} s]  "
              f"events: {engine.prefill_steps:,} prefills, {engine.decode_steps:,} decode steps; "
              f"P99 TTFT {s.ttft_p99_s:.3f} s, hit rate {s.cache_hit_rate:.3f}")


if __name__ == "__main__":
    main()
