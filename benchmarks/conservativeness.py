"""Does SGLang's schedule_conservativeness interact with the queue policy? The measurement behind tuning it apart.

Run: .venv/bin/python benchmarks/conservativeness.py [--num-requests 2000] [--json]

The embedded engine as SGLang 0.5.23 runs (``sglang_engine_config(c)``: reserve share min(0.7 c, 1) decaying to
0.14 of that, a new request reserving its whole output) on an H100 with Llama-3.1-8B (the shipped fitted
profile) and a KV cache held to ``--kv-tokens`` so that reserves decide admission, serves one shared-prefix
workload with long, varied outputs (the traffic where an operator turns this knob) at two loads, for every
conservativeness x queue policy. Printed per cell: P99 TTFT, throughput and retractions; then, per load, each
policy's best c and the *interaction*: how much worse each policy does with the one c that is best summed over
the policies than with its own best. A small interaction means the two knobs can be tuned apart (a second,
one-dimensional tuner beside the queue-policy tuner) instead of as a product of arms (len(c) x len(policies)
arms, each seen less often).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from schedctl.cli.common import hardware
from schedctl.policies.spec import parse_policy
from schedctl.sim.engine import sglang_engine_config
from schedctl.sim.run import Hardware, simulate
from schedctl.workloads.registry import make_requests

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "config" / "profiles" / "h100-sxm-llama-3.1-8b" / "profile.toml"
WORKLOAD = ("gsp:num_groups=48,prompts_per_group=16,system_prompt_len=2048,question_len=128,output_len=1024,"
            "range_ratio=0.1")
CONSERVATIVENESS = (0.1, 0.3, 0.6, 1.0, 1.5, 3.0)
POLICIES = ("fcfs", "klpm:4", "lpm")


def h100_hardware(kv_tokens: int) -> Hardware:
    """An H100 with Llama-3.1-8B and its fitted step-time profile (shared with benchmarks/reserve_tuner.py)."""
    return hardware("h100-sxm", "llama-3.1-8b", PROFILE, kv_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=2000)
    ap.add_argument("--kv-tokens", type=int, default=60_000)
    ap.add_argument("--rates", default="4,6", help="req/s, comma-separated")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hw = h100_hardware(args.kv_tokens)
    cells = []
    for rate in (float(r) for r in args.rates.split(",")):
        reqs = list(make_requests(WORKLOAD, rate, "poisson", num_requests=args.num_requests, seed=args.seed))
        for c in CONSERVATIVENESS:
            for pol in POLICIES:
                _eng, s = simulate(reqs, parse_policy(pol), hw, sglang_engine_config(c), rate=rate)
                cells.append(dict(rate=rate, conservativeness=c, policy=pol, ttft_p99_s=s.ttft_p99_s,
                                  throughput_rps=s.throughput_rps, retractions=s.retractions))
    verdicts = []
    for rate in dict.fromkeys(c["rate"] for c in cells):
        mine = [c for c in cells if c["rate"] == rate]
        p99 = {(c["policy"], c["conservativeness"]): c["ttft_p99_s"] for c in mine}
        own = {p: min(CONSERVATIVENESS, key=lambda c, p=p: p99[p, c]) for p in POLICIES}
        common = min(CONSERVATIVENESS, key=lambda c: sum(p99[p, c] / p99[p, own[p]] for p in POLICIES))
        loss = {p: p99[p, common] / p99[p, own[p]] - 1 for p in POLICIES}
        gain = {p: max(p99[p, c] for c in CONSERVATIVENESS) / p99[p, own[p]] - 1 for p in POLICIES}
        verdicts.append(dict(rate=rate, best_c=own, common_c=common, loss_with_common_c=loss,
                             spread_over_c=gain))
    if args.json:
        print(json.dumps({"workload": WORKLOAD, "kv_tokens": args.kv_tokens, "cells": cells, "verdicts": verdicts}))
        return
    print(f"workload {WORKLOAD}, KV {args.kv_tokens} tokens, {args.num_requests} requests, H100 Llama-3.1-8B")
    print(f"{'rate':>5s} {'c':>4s} " + " ".join(f"{p:>26s}" for p in POLICIES))
    print(f"{'':>10s} " + " ".join(f"{'P99 TTFT s  req/s  retr':>26s}" for _ in POLICIES))
    for rate in dict.fromkeys(c["rate"] for c in cells):
        for cv in CONSERVATIVENESS:
            row = {c["policy"]: c for c in cells if c["rate"] == rate and c["conservativeness"] == cv}
            print(f"{rate:5g} {cv:4g} " + " ".join(
                f"{row[p]['ttft_p99_s']:12.3g} {row[p]['throughput_rps']:6.2f} {row[p]['retractions']:5d}"
                for p in POLICIES))
    for v in verdicts:
        print(f"rate {v['rate']:g}: best c per policy {v['best_c']}; one c for all: {v['common_c']:g}, costing "
              + ", ".join(f"{p} {x:+.1%}" for p, x in v["loss_with_common_c"].items())
              + " of P99 TTFT; worst c against best: "
              + ", ".join(f"{p} {x:+.0%}" for p, x in v["spread_over_c"].items()))


if __name__ == "__main__":
    main()
