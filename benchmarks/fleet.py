"""A fleet on one machine: 4 `schedctl sim serve` replicas behind SGLang's router (cache-aware), `schedctl load` as
the traffic; P99 TTFT per replica and for the fleet under static FCFS, each static k, and per-replica adaptive
(one schedctl sidecar per replica), plus the time each part of the testbed took to start.

    bash scripts/setup-router.sh                 # once: .venv-router with sglang-router 0.3.2
    python benchmarks/fleet.py                   # 4 replicas, time scale 2, ~2 minutes
    python benchmarks/fleet.py --replicas 2 --statics klpm:4 --num-requests 400

Every configuration gets a fresh testbed (replicas, router, sidecars) and the same trace. "static best k" is the
static with the lowest fleet P99 among --statics. Per-replica figures are each replica's own
(``/schedctl_sim/summary``, simulated seconds) and "fleet" pools every replica's requests; "client" is what
`schedctl load` saw through the router × the time scale: it adds the wall-clock cost of the HTTP path (router,
uvicorn, the client) on this machine, × the scale, and grows with the machine's other load.
The replicas are stand-ins for GPUs (`/server_info` says so); the machine is shared: read the figures side by side
within one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from schedctl.loadgen import LoadConfig, retime, run_load
from schedctl.simserve.fleet import Fleet, FleetConfig
from schedctl.workloads.registry import make_requests, parse_arrival, parse_rate, parse_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--time-scale", type=float, default=2.0)
    ap.add_argument("--workload", default="gsp:output_len=32,num_groups=128")
    ap.add_argument("--rate", default="40", help="fleet req/s (simulated)")
    ap.add_argument("--num-requests", type=int, default=600)
    ap.add_argument("--statics", default="klpm:2,klpm:8,lpm", help="static orders besides fcfs")
    ap.add_argument("--gpu", default="a100-80gb")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    reqs = list(make_requests(parse_workload(a.workload), parse_rate(a.rate), parse_arrival("poisson"),
                              a.num_requests, None, a.seed))
    base = FleetConfig(replicas=a.replicas, time_scale=a.time_scale, gpu=a.gpu)
    runs = [("static fcfs", base.model_copy(update={"replica_policy": "fcfs"}))]
    runs += [(f"static {p}", base.model_copy(update={"replica_policy": p})) for p in a.statics.split(",")]
    runs += [("adaptive", base.model_copy(update={"sidecars": True}))]
    rows: list[tuple[str, list[float], float, float, int, dict[str, float], list[str]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, cfg in runs:
            with Fleet(cfg, Path(tmp) / label.replace(" ", "-").replace(":", "")) as fleet:
                load = run_load(retime(reqs, time_scale=1 / cfg.time_scale), LoadConfig(url=fleet.url,
                                                                                   vocab_size=2**31))
                per = fleet.summaries()
                pooled = float(np.quantile(fleet.fleet_ttfts(), 0.99))
                active = [i["internal_states"][0]["schedctl_sim"]["active_policy"] for i in fleet.server_infos()]
            rows.append((label, [s["ttft_p99_s"] for s in per], pooled, load.summary.ttft_p99_s * cfg.time_scale,
                         load.summary.errors, fleet.start_s, active))
            print(f"done: {label} ({load.summary.requests} requests, {load.summary.errors} errors)", flush=True)
    statics = [r for r in rows if r[0].startswith("static ") and r[0] != "static fcfs"]
    best = min(statics, key=lambda r: r[2]) if statics else None
    print(f"\n{a.replicas} replicas ({a.gpu} stand-ins, time scale {a.time_scale:g}), {a.workload} at {a.rate} req/s, "
          f"{a.num_requests} requests, SGLang router cache_aware; P99 TTFT in simulated s")
    head = "".join(f"{'replica ' + str(i):>11}" for i in range(a.replicas))
    print(f"{'configuration':<22}{head}{'fleet':>9}{'client':>9}{'errors':>8}   active at the end")
    for label, per_p99, fleet_p99, client_p99, errors, _start, active in rows:
        name = label + (" (best k)" if best is not None and label == best[0] else "")
        print(f"{name:<22}{''.join(f'{x:11.3f}' for x in per_p99)}{fleet_p99:9.3f}{client_p99:9.3f}{errors:8d}   "
              f"{','.join(active)}")
    if best is not None:
        fcfs, adaptive = rows[0][2], rows[-1][2]
        print(f"fleet P99 ratios: best static / fcfs {best[2] / fcfs:.2f}, adaptive / best static "
              f"{adaptive / best[2]:.2f}, adaptive / fcfs {adaptive / fcfs:.2f}")
    print("\nstart-up (s, wall):")
    for label, *_rest, start, _active in rows:
        print(f"  {label:<20} " + ", ".join(f"{k} {v:.2f}" for k, v in start.items()))


if __name__ == "__main__":
    main()
