"""The simulator against the live engine: one trace, one policy, the CPU SGLang server and the simulator side by side.

Run (needs the SGLang venv, ~5-10 min on 2 cores; one server, stopped at the end whatever happens):

    PYTHONPATH=. /work/main/.venv-sglang/bin/python benchmarks/fidelity_live.py [--json] [--num-requests 96]

1. Starts a real SGLang 0.5.23 server on this CPU (tiny random-weight Llama, ``tiny_cpu_server``: the schedctl
   plugin loaded, ``--max-total-tokens --max-running-requests --chunked-prefill-size`` as given, forward-iteration
   numbers in its log: ``SGLANG_LOG_FORWARD_ITERS=1``).
2. Calibrates: a calibration load (unique prompts of mixed lengths in a burst, then long decodes at 1, 4 and 8
   concurrent requests) is sent, and the step-time profile is fitted to the server's own ``Prefill batch`` /
   ``Decode batch`` log lines (``schedctl calibrate --from server.log``: ``read_sglang_log`` + ``fit_rows``).
   None of the evaluation traces is used to calibrate.
3. For each workload (shared prefixes at a low and a high load, and one without sharing) and each policy
   (``fcfs``, ``lpm``, ``klpm:4``, pushed to the plugin): flushes the server's cache, replays the trace with
   ``schedctl load``'s engine (run_load), and simulates the same requests (the token ids the server got) with the
   calibrated profile, the server's KV size, running cap and chunk size, two ways: ``sglang`` (the engine as
   SGLang runs: ``sglang_engine_config``, see docs/fidelity.md) and ``ideal`` (the default embedded engine).
4. Prints per cell live vs simulated P50/P99 TTFT, P99 TBT, throughput, cache hit rate and the relative error of
   each, and per workload whether the policies rank the same by P99 TTFT. ``--json`` for scripts.

The host is shared and busy: live timings are noisy (a step of the tiny model is a few milliseconds, so another
process on the two cores moves them by tens of percent). Read the errors with that in mind, and rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.launcher import tiny_cpu_server
from schedctl.loadgen.protocol import fit_vocab
from schedctl.loadgen.runner import LoadConfig, run_load
from schedctl.policies.spec import parse_policy
from schedctl.sim.calibrate import fit_rows, read_sglang_log
from schedctl.sim.engine import EngineConfig, sglang_engine_config
from schedctl.sim.profiles import ModelProfile, load_gpu
from schedctl.sim.run import Hardware, SimSummary, simulate
from schedctl.workloads.registry import make_requests
from schedctl.workloads.types import Request

VOCAB = 32000  # the tiny model's
TINY = ModelProfile(name="tiny-llama (CPU)", num_layers=2, hidden_size=256, num_attention_heads=4, num_kv_heads=2,
                    head_dim=64, intermediate_size=512, vocab_size=VOCAB, dtype_bytes=4)
FIGURES = ("ttft_p50_s", "ttft_p99_s", "tbt_p99_s", "throughput_rps", "cache_hit_rate")
# name -> (workload, rate req/s); sizes chosen so the 4,096-token KV cache cannot hold every shared prefix
WORKLOADS = {
    "shared-low": ("gsp:num_groups=6,prompts_per_group=16,system_prompt_len=768,question_len=64,output_len=16", 6.0),
    "shared-high": ("gsp:num_groups=6,prompts_per_group=16,system_prompt_len=768,question_len=64,output_len=16",
                    30.0),
    "unique": ("gsp:num_groups=96,prompts_per_group=1,system_prompt_len=256,question_len=64,output_len=16", 10.0),
}


def hashed(reqs: list[Request]) -> list[Request]:
    """The requests with the token ids the server receives (ids hashed into its vocabulary)."""
    return [Request(request_id=r.request_id, arrival_s=r.arrival_s, prompt=fit_vocab(r.prompt, VOCAB),
                    output_len=r.output_len) for r in reqs]


def calibration_requests(seed: int) -> list[list[Request]]:
    burst = make_requests("gsp:num_groups=48,prompts_per_group=1,system_prompt_len=1024,question_len=32,"
                          "output_len=2,range_ratio=0.05", 1e4, "regular", num_requests=48, seed=seed + 100)
    out = [hashed(list(burst))]
    for conc in (1, 4, 8):
        reqs = make_requests(f"gsp:num_groups={conc},prompts_per_group=1,system_prompt_len=128,question_len=32,"
                             "output_len=200", 1e4, "regular", num_requests=conc, seed=seed + conc)
        out.append(hashed(list(reqs)))
    return out


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rel_err(sim: float, live: float) -> float:
    return (sim - live) / live if live and not math.isnan(live) and not math.isnan(sim) else math.nan


def ranking(values: dict[str, float]) -> list[str]:
    return sorted(values, key=lambda p: (values[p], p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=96)
    ap.add_argument("--policies", default="fcfs,lpm,klpm:4")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--kv-tokens", type=int, default=4096)
    ap.add_argument("--max-running", type=int, default=8)
    ap.add_argument("--chunk-tokens", type=int, default=2048)
    ap.add_argument("--warmup-s", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="server directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    policies = args.policies.split(",")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="fidelity-live-"))
    sglang_args = ["--max-total-tokens", str(args.kv_tokens), "--max-running-requests", str(args.max_running),
                   "--chunked-prefill-size", str(args.chunk_tokens)]
    server = tiny_cpu_server(workdir, sglang_args=sglang_args, environ={"SGLANG_LOG_FORWARD_ITERS": "1"})
    cells: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        server.start()
        server.wait_healthy(420.0)
        say(f"server healthy at {server.url} after {time.monotonic() - t0:.0f} s ({workdir})")
        url = server.url
        adapter = SGLangAdapter(url, timeout_s=10.0)
        load_cfg = LoadConfig(url=url, request_timeout_s=180.0, warmup_s=args.warmup_s)
        # 2. calibration from the server's own log
        for part in calibration_requests(args.seed):
            run_load(part, LoadConfig(url=url, request_timeout_s=180.0))
        time.sleep(1.0)
        log = read_sglang_log(workdir / "server.log")
        profile, report = fit_rows(log.rows, "fit:fidelity_live/server.log")
        say(f"calibrated from {len(log.rows)} log rows ({log.prefill_rows} prefill, {log.decode_rows} decode): "
            f"{report.form} form, MAPE {report.mape:.1%}, worst {report.worst_ape:.1%}")
        hw = Hardware(gpu=load_gpu("h100-sxm"), model=TINY, step_profile=profile, kv_capacity_tokens=args.kv_tokens)
        engines = {
            "sglang": sglang_engine_config(max_running_requests=args.max_running,
                                           chunked_prefill_tokens=args.chunk_tokens),
            "ideal": EngineConfig(max_running_requests=args.max_running, chunked_prefill_tokens=args.chunk_tokens),
        }
        # 3. every workload x policy, live and simulated
        for wname in args.workloads.split(","):
            spec, rate = WORKLOADS[wname]
            reqs = hashed(list(make_requests(spec, rate, "poisson", num_requests=args.num_requests, seed=args.seed)))
            for pol in policies:
                adapter.apply(parse_policy(pol))
                httpx.post(f"{url}/flush_cache", timeout=30.0).raise_for_status()
                live = run_load(reqs, load_cfg, rate=rate, seed=args.seed).summary
                cell: dict[str, Any] = {"workload": wname, "policy": pol, "rate": rate,
                                        "live": live.model_dump(include=set(FIGURES) | {"requests", "errors"})}
                for mode, cfg in engines.items():
                    _e, s = simulate(reqs, parse_policy(pol), hw, cfg, rate=rate, warmup_s=args.warmup_s)
                    cell[mode] = _figures(s)
                    cell[f"{mode}_error"] = {f: rel_err(cell[mode][f], cell["live"][f]) for f in FIGURES}
                cells.append(cell)
                say(f"{wname:12s} {pol:7s} live P99 TTFT {live.ttft_p99_s:.3f} s, sim(sglang) "
                    f"{cell['sglang']['ttft_p99_s']:.3f} s, sim(ideal) {cell['ideal']['ttft_p99_s']:.3f} s")
        adapter.close()
    finally:
        server.stop()
    rankings = {}
    for wname in args.workloads.split(","):
        mine = [c for c in cells if c["workload"] == wname]
        if not mine:
            continue
        rankings[wname] = {k: ranking({c["policy"]: c[k]["ttft_p99_s"] for c in mine}) for k in ("live", "sglang",
                                                                                                  "ideal")}
    doc = {"profile": profile.model_dump(), "fit": {"form": report.form, "rows": report.rows, "mape": report.mape,
                                                    "worst_ape": report.worst_ape},
           "settings": {k: v for k, v in vars(args).items() if k not in ("dir", "json")}, "cells": cells,
           "rankings": rankings}
    if args.json:
        print(json.dumps(doc, default=str))
        return
    _print(cells, rankings)


def _figures(s: SimSummary) -> dict[str, float]:
    return {f: float(getattr(s, f)) for f in FIGURES} | {"requests": s.requests}


def _print(cells: list[dict[str, Any]], rankings: dict[str, dict[str, list[str]]]) -> None:
    short = {"ttft_p50_s": "TTFT p50 s", "ttft_p99_s": "TTFT p99 s", "tbt_p99_s": "TBT p99 s",
             "throughput_rps": "req/s", "cache_hit_rate": "hit rate"}
    print(f"{'workload':12s} {'policy':7s} {'figure':11s} {'live':>9s} {'sim sglang':>11s} {'err':>7s} "
          f"{'sim ideal':>10s} {'err':>7s}")
    for c in cells:
        for f in FIGURES:
            print(f"{c['workload']:12s} {c['policy']:7s} {short[f]:11s} {c['live'][f]:9.4g} {c['sglang'][f]:11.4g} "
                  f"{c['sglang_error'][f]:+7.1%} {c['ideal'][f]:10.4g} {c['ideal_error'][f]:+7.1%}")
    print("\npolicies ranked by P99 TTFT (best first):")
    for w, r in rankings.items():
        same = {k: r[k] == r["live"] for k in ("sglang", "ideal")}
        print(f"  {w:12s} live {' < '.join(r['live'])}; sim sglang {' < '.join(r['sglang'])} "
              f"({'same' if same['sglang'] else 'differs'}); sim ideal {' < '.join(r['ideal'])} "
              f"({'same' if same['ideal'] else 'differs'})")


if __name__ == "__main__":
    main()
