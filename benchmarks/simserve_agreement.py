"""`schedctl sim serve` against `schedctl simulate` on one trace: TTFT seen by `schedctl load` at a time scale.

    python benchmarks/simserve_agreement.py                       # time scales 4 and 10
    python benchmarks/simserve_agreement.py --time-scales 1,10 --num-requests 400

For each time scale a replica (`schedctl sim serve --gpu a100-80gb --policy klpm:4`) is started in its own
process, the trace (gsp with 32 output tokens at 12 req/s: queueing, TTFTs from tens of ms to seconds) is sent
with the load generator at 1/scale of its offsets, and the client's TTFTs × the scale are set beside `simulate`'s
on the trace as written and on the trace as sent (the client's own send lag taken out). Figures in simulated
seconds. On a busy 2-core machine the send lag grows with the scale: read the "as sent" columns for the stand-in.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from schedctl.policies.spec import parse_policy
from schedctl.sim.engine import EngineConfig
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.simserve.agreement import measure
from schedctl.simserve.procs import free_port, start_replica
from schedctl.workloads.registry import make_requests, parse_arrival, parse_rate, parse_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-scales", default="4,10")
    ap.add_argument("--num-requests", type=int, default=200)
    ap.add_argument("--rate", default="12")
    ap.add_argument("--workload", default="gsp:output_len=32")
    ap.add_argument("--gpu", default="a100-80gb")
    ap.add_argument("--policy", default="klpm:4")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    hw = Hardware(gpu=load_gpu(a.gpu), model=load_model("llama-3.1-8b"))
    policy = parse_policy(a.policy)
    reqs = list(make_requests(parse_workload(a.workload), parse_rate(a.rate), parse_arrival("poisson"),
                              a.num_requests, None, a.seed))
    print(f"{a.workload} at {a.rate} req/s, {a.num_requests} requests, {a.policy} on {a.gpu}; TTFT in simulated s")
    print(f"{'scale':>5} {'':>18} {'p50':>7} {'p90':>7} {'p99':>7}   per-request |served - as sent| p50/p90, "
          "send lag p50/max, errors")
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (float(s) for s in a.time_scales.split(",")):
            port = free_port()
            proc = start_replica(f"replica-{port}", port, Path(tmp),
                                 ["--gpu", a.gpu, "--policy", a.policy, "--time-scale", f"{scale:g}"])
            try:
                r = measure(reqs, proc.url or "", scale, policy, hw, EngineConfig())
            finally:
                proc.stop()
            for label, f in (("sim serve (load)", r.served), ("simulate", r.simulated),
                             ("simulate, as sent", r.simulated_as_sent)):
                tail = (f"   {r.diff_as_sent_p50_s:.3f}/{r.diff_as_sent_p90_s:.3f}, {r.send_lag_p50_s:.3f}/"
                        f"{r.send_lag_max_s:.3f}, {r.errors}") if label.startswith("sim serve") else ""
                print(f"{scale:>5g} {label:>18} {f.p50_s:7.3f} {f.p90_s:7.3f} {f.p99_s:7.3f}{tail}")


if __name__ == "__main__":
    main()
