"""The conservativeness tuner against SGLang's default (static c = 1.0), side by side in one run.

Run: .venv/bin/python benchmarks/reserve_tuner.py [--num-requests 1500] [--rates 8,16] [--seeds 1,2,3]
     [--start 1.0] [--fixed-policy klpm:4] [--json]

The workload and engine of ``benchmarks/conservativeness.py`` (SGLang 0.5.23's scheduler and reserve share in the
embedded engine, H100 / Llama-3.1-8B fitted profile, a KV cache held to ``--kv-tokens`` so that reserves decide
admission, shared-prefix prompts with long varied outputs: traffic where the share matters). Each run goes through
the sidecar's own loop (``Service.tick``: observe, ``Controller.step``, push, as ``schedctl run`` does) with the
queue-policy tuner on (or, ``--fixed-policy``, held at one policy by an endless dwell); the runs differ only in
the reserve: static at each of the tuner's arms (SGLang's default
1.0 among them), and the ReserveTuner (``[reserve] enabled``) starting from ``--start``. Printed per load: P99 TTFT,
retractions, throughput, the values the tuner ran (windows at each) and its first moves; then, over the seeds,
the geometric mean of the tuner's P99 TTFT over static 1.0's and over the best static value's (chosen in
hindsight per seed), and the retractions summed.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
from conservativeness import WORKLOAD, h100_hardware  # the same traffic and hardware as that measurement

from schedctl.bench.adaptive import run_ttfts
from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.guard import GuardParams
from schedctl.controller.reserve_tuner import ReserveParams
from schedctl.controller.service import Service, run_simulated
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.sim.engine import sglang_engine_config
from schedctl.sim.run import Hardware, new_engine
from schedctl.workloads.registry import make_requests

DRAIN_LIMIT_S = 600.0


def run(hw: Hardware, reqs: list, params: ControllerParams, c: float, tick_s: float) -> dict:
    adapter = SimAdapter(new_engine(hw, params.initial_policy, sglang_engine_config(c)), iter(reqs), tick_s,
                         keep_ttfts=True)
    service = Service(Controller(params, run_id="bench"), adapter, clock=lambda: adapter.now_s)
    end_s = reqs[-1].arrival_s + DRAIN_LIMIT_S
    values: Counter[float] = Counter()
    moves: list[str] = []

    def on_tick(d) -> None:  # type: ignore[no-untyped-def]
        values[adapter.engine.cfg.schedule_conservativeness] += 1
        if d.reserve is not None and d.reserve.changed:
            moves.append(f"t{d.window.end_s:.0f}s {d.reserve.previous:g}->{d.reserve.value:g} ({d.reserve.rule})")

    run_simulated(service, lambda: adapter.done() or adapter.now_s >= end_s, on_tick=on_tick)
    ttfts = run_ttfts(adapter)
    eng = adapter.engine
    return dict(ttft_p99_s=float(np.quantile(ttfts, 0.99)), ttft_p50_s=float(np.quantile(ttfts, 0.5)),
                retractions=eng.retractions, throughput_rps=len(ttfts) / max(adapter.now_s, 1e-9),
                ticks=service.controller.tick, values={f"{v:g}": n for v, n in sorted(values.items())}, moves=moves)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=1500)
    ap.add_argument("--kv-tokens", type=int, default=60_000)
    ap.add_argument("--rates", default="8,16", help="req/s, comma-separated")
    ap.add_argument("--seeds", default="1,2,3", help="workload seeds, comma-separated")
    ap.add_argument("--tick-s", type=float, default=2.0, help="simulated seconds per controller tick")
    ap.add_argument("--start", type=float, default=1.0, help="the tuner's initial value (one of its arms)")
    ap.add_argument("--fixed-policy", default=None, help="hold this queue policy (default: the k tuner moves it)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hw = h100_hardware(args.kv_tokens)
    tuned = ReserveParams(enabled=True, initial=args.start)
    base = ControllerParams() if args.fixed_policy is None else ControllerParams(
        initial_policy=args.fixed_policy, guard=GuardParams(min_dwell_ticks=1_000_000, safe_policy=args.fixed_policy))
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            reqs = list(make_requests(WORKLOAD, rate, "poisson", num_requests=args.num_requests, seed=seed))
            for c in tuned.arms:
                rows.append(dict(rate=rate, seed=seed, run=f"static c={c:g}", **run(hw, reqs, base, c, args.tick_s)))
            rows.append(dict(rate=rate, seed=seed, run="tuner", **run(
                hw, reqs, base.model_copy(update={"reserve": tuned}), args.start, args.tick_s)))
    if args.json:
        print(json.dumps({"workload": WORKLOAD, "kv_tokens": args.kv_tokens, "rows": rows}))
        return
    print(f"workload {WORKLOAD}, KV {args.kv_tokens} tokens, {args.num_requests} requests, H100 Llama-3.1-8B, "
          f"tick {args.tick_s:g} s, queue policy: {args.fixed_policy or 'the k tuner'}, tuner from c={args.start:g}")
    for rate in dict.fromkeys(r["rate"] for r in rows):
        print(f"\nrate {rate:g} req/s")
        print(f"  {'seed':>4s} {'run':<12s} {'P99 TTFT s':>10s} {'P50 s':>7s} {'retractions':>11s} {'req/s':>6s}  "
              "windows at each c")
        vs_default, vs_best, retr = [], [], Counter()
        for seed in dict.fromkeys(r["seed"] for r in rows):
            mine = [r for r in rows if r["rate"] == rate and r["seed"] == seed]
            for r in mine:
                retr[r["run"]] += r["retractions"]
                print(f"  {seed:4d} {r['run']:<12s} {r['ttft_p99_s']:10.3g} {r['ttft_p50_s']:7.3g} "
                      f"{r['retractions']:11d} {r['throughput_rps']:6.2f}  {r['values']}")
            tuner = mine[-1]
            default = next(r for r in mine if r["run"] == "static c=1")
            best = min((r for r in mine if r["run"].startswith("static")), key=lambda r: r["ttft_p99_s"])
            vs_default.append(tuner["ttft_p99_s"] / default["ttft_p99_s"])
            vs_best.append(tuner["ttft_p99_s"] / best["ttft_p99_s"])
            print(f"       tuner moves: {', '.join(tuner['moves'][:6]) or 'none'}"
                  + (f" (+{len(tuner['moves']) - 6} more)" if len(tuner["moves"]) > 6 else ""))
        gm = lambda xs: float(np.exp(np.mean(np.log(xs))))  # noqa: E731
        print(f"  P99 TTFT, tuner / static c=1 (SGLang's default): {gm(vs_default):.3f}x (per seed "
              f"{', '.join(f'{x:.2f}' for x in vs_default)}); tuner / best static in hindsight: {gm(vs_best):.3f}x")
        print("  retractions summed over seeds: " + ", ".join(f"{k} {v}" for k, v in retr.items()))


if __name__ == "__main__":
    main()
