"""The simulator against the live engine: one trace, one policy, the CPU SGLang server and the simulator side by side.

Run (needs the SGLang venv, ~5-10 min on 2 cores; one server, stopped at the end whatever happens):

    PYTHONPATH=. /work/main/.venv-sglang/bin/python benchmarks/fidelity_live.py [--json] [--num-requests 96]

1. Starts a real SGLang 0.5.23 server on this CPU (tiny random-weight Llama, ``tiny_cpu_server``: the schedctl
   plugin loaded, ``--max-total-tokens --max-running-requests --chunked-prefill-size`` as given, forward-iteration
   numbers in its log: ``SGLANG_LOG_FORWARD_ITERS=1``), with its scheduler process alone on core 0 and its other
   processes and the load generator on core 1 (``isolate_scheduler``; on 2 cores or more).
2. Calibrates: a calibration load (bursts of unique and shared-prefix prompts, then long decodes at 1 to 16
   concurrent requests) is sent, and the step-time profile is fitted to the server's own ``Prefill batch`` /
   ``Decode batch`` log lines (``schedctl calibrate --from server.log``: ``read_sglang_log`` + ``fit_rows``),
   together with the single-prefill steps of a first, short-lived server run one request at a time
   (``calibrate_single_prefills``: a log times a prefill step only when requests were waiting before it).
   None of the evaluation traces is used to calibrate.
3. For each workload (shared prefixes at a low and a high load, and one without sharing) and each policy
   (``fcfs``, ``lpm``, ``klpm:4``, pushed to the plugin): flushes the server's cache, replays the trace with
   ``schedctl load``'s engine (run_load), and simulates the same requests (the token ids the server got) with the
   calibrated profile, the server's KV size, running cap and chunk size, two ways: ``sglang`` (the engine as
   SGLang runs with the schedctl plugin ordering its queue: ``sglang_engine_config(sglang_plugin_order=True)``,
   see docs/fidelity.md) and ``ideal`` (the default embedded engine).
4. Prints per cell live vs simulated P50/P99 TTFT, P99 TBT, throughput, cache hit rate and the relative error of
   each, and per workload whether the policies rank the same by P99 TTFT. ``--json`` for scripts.

The host is shared and busy: live timings are noisy (a step of the tiny model is a few milliseconds, so another
process on the two cores moves them by tens of percent). Read the errors with that in mind, and rerun.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.launcher import ServerProcess, tiny_cpu_server
from schedctl.loadgen.protocol import fit_vocab
from schedctl.loadgen.runner import LoadConfig, run_load
from schedctl.policies.spec import parse_policy
from schedctl.sim.calibrate import StepRow, fit_rows, predicted_s, read_sglang_log
from schedctl.sim.engine import EngineConfig, sglang_engine_config
from schedctl.sim.profiles import ModelProfile, load_gpu
from schedctl.sim.run import Hardware, SimSummary, simulate
from schedctl.sim.step_time import StepTimeProfile
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
    """Calibration traffic, none of it an evaluation trace, covering the step shapes the server runs:

    - bursts of unique prompts of 60-2,048 tokens and over shared prefixes of 256 and 1,024 tokens (large prefill
      batches, prefills after a cached context);
    - long decodes at 1 to 16 concurrent requests (decode lines need decode-only intervals).
    """
    bursts = [
        ("gsp:num_groups=40,prompts_per_group=1,system_prompt_len=2048,question_len=16,output_len=1,"
         "range_ratio=0.03", 40),
        ("rasq:num_groups=4,queries_per_group=8,shared_len=1024,unique_len=32,output_len=1", 32),
        ("rasq:num_groups=4,queries_per_group=8,shared_len=256,unique_len=256,output_len=1", 32),
    ]
    out = [hashed(list(make_requests(w, 1e4, "regular", num_requests=n, seed=seed + 100 + i)))
           for i, (w, n) in enumerate(bursts)]
    for conc in (1, 2, 4, 8, 16):
        reqs = make_requests(f"gsp:num_groups={conc},prompts_per_group=1,system_prompt_len=1024,question_len=32,"
                             "output_len=120,range_ratio=0.1", 1e4, "regular", num_requests=conc, seed=seed + conc)
        out.append(hashed(list(reqs)))
    return out


def single_prefill_requests(seed: int) -> list[Request]:
    """Calibration for one prefill per step (the commonest step at light load): bursts of one-token answers, sent
    to a server that runs one request at a time (``--max-running-requests 1``), so that each prefill follows
    the previous one with requests still waiting (the only prefill steps an SGLang log times; see
    ``read_sglang_log``): prompts of 100-2,000 tokens, alone or after a cached prefix of 256 or 1,024 tokens."""
    parts = [("gsp:num_groups=24,prompts_per_group=1,system_prompt_len=2048,question_len=16,output_len=1,"
              "range_ratio=0.05", 24),
             ("rasq:num_groups=2,queries_per_group=10,shared_len=1024,unique_len=48,output_len=1", 20),
             ("rasq:num_groups=2,queries_per_group=10,shared_len=256,unique_len=160,output_len=1", 20)]
    return [r for i, (w, n) in enumerate(parts)
            for r in hashed(list(make_requests(w, 1e4, "regular", num_requests=n, seed=seed + 300 + i)))]


def isolate_scheduler(server: ServerProcess) -> str:
    """Pin SGLang's scheduler process (every thread) to core 0, its other processes and this one to core 1.

    On this 2-core testbed the forward pass otherwise shares its core with SGLang's tokenizer and detokenizer
    processes and the load generator, and a step costs more the more the others stream: a cost no step-time
    profile of the forward pass carries. A GPU host has the forward pass on the GPU. Returns what it did.
    """
    if (os.cpu_count() or 1) < 2 or server.proc is None:
        return "scheduler not isolated (fewer than 2 cores)"
    pgid, pinned = server.proc.pid, {0: 0, 1: 0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pgid:  # fields after the name: state ppid pgrp
                continue
            core = 0 if b"scheduler" in (stat.parent / "cmdline").read_bytes() else 1
            for task in (stat.parent / "task").iterdir():
                os.sched_setaffinity(int(task.name), {core})
                pinned[core] += 1
        except (OSError, ValueError, IndexError):
            continue  # a process or thread that ended meanwhile
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), {1})
    return f"scheduler isolated: {pinned[0]} threads on core 0, {pinned[1]} other server threads and the load on core 1"


def calibrate_single_prefills(workdir: Path, sglang_args: list[str], seed: int) -> list[StepRow]:
    """The step rows of :func:`single_prefill_requests` on a server of its own, started and stopped here."""
    args = [*sglang_args]
    args[args.index("--max-running-requests") + 1] = "1"
    server = tiny_cpu_server(workdir, sglang_args=args, environ={"SGLANG_LOG_FORWARD_ITERS": "1"})
    try:
        server.start()
        server.wait_healthy(420.0)
        say(isolate_scheduler(server))
        reqs = single_prefill_requests(seed)
        for lo in range(0, len(reqs), 8):  # bursts of 8: each prefill but the last of a burst has others waiting
            run_load(reqs[lo:lo + 8], LoadConfig(url=server.url, request_timeout_s=180.0))
        time.sleep(1.0)
    finally:
        server.stop()
    return [r for r in read_sglang_log(workdir / "server.log").rows if r.prefill_tokens]


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def rel_err(sim: float, live: float) -> float:
    return (sim - live) / live if live and not math.isnan(live) and not math.isnan(sim) else math.nan


def ranking(values: dict[str, float], tie: float) -> str:
    """Policies best first by the figure; ``~`` joins neighbours within ``tie`` (relative) of each other."""
    order = sorted(values, key=lambda p: (values[p], p))
    out = order[:1]
    for prev, cur in itertools.pairwise(order):
        out.append(("~ " if values[cur] <= values[prev] * (1 + tie) else "< ") + cur)
    return " ".join(out)


def same_ranking(live: dict[str, float], sim: dict[str, float], tie: float) -> bool | None:
    """Whether every pair of policies that both runs tell apart (by more than ``tie``) is ordered the same way;
    None if no pair is told apart by both."""
    verdicts = []
    for a in live:
        for b in live:
            if a < b:
                dl, ds = live[a] / live[b] - 1, sim[a] / sim[b] - 1
                if abs(dl) > tie and abs(ds) > tie:
                    verdicts.append((dl > 0) == (ds > 0))
    return all(verdicts) if verdicts else None


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
    ap.add_argument("--tie", type=float, default=0.1, help="P99 TTFTs within this (relative) rank as a tie")
    ap.add_argument("--dir", type=Path, default=None, help="server directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the JSON document to this file")
    ap.add_argument("--resimulate", type=Path, default=None, help="no server: take the live figures, the profile and "
                    "the settings of an earlier --json-out and simulate its cells again with this code")
    args = ap.parse_args()
    if args.resimulate is not None:
        _report(resimulate(json.loads(args.resimulate.read_text())), args)
        return
    policies = args.policies.split(",")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="fidelity-live-"))
    sglang_args = ["--max-total-tokens", str(args.kv_tokens), "--max-running-requests", str(args.max_running),
                   "--chunked-prefill-size", str(args.chunk_tokens), "--decode-log-interval", "10"]
    single_rows = calibrate_single_prefills(workdir / "single", sglang_args, args.seed)
    say(f"{len(single_rows)} single-prefill rows from a one-request-at-a-time server")
    server = tiny_cpu_server(workdir, sglang_args=sglang_args, environ={"SGLANG_LOG_FORWARD_ITERS": "1"})
    cells: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        server.start()
        server.wait_healthy(420.0)
        say(isolate_scheduler(server))
        say(f"server healthy at {server.url} after {time.monotonic() - t0:.0f} s ({workdir})")
        url = server.url
        adapter = SGLangAdapter(url, timeout_s=10.0)
        load_cfg = LoadConfig(url=url, request_timeout_s=180.0, warmup_s=args.warmup_s)
        # 2. calibration from the server's own log
        for part in calibration_requests(args.seed):
            run_load(part, LoadConfig(url=url, request_timeout_s=180.0))
        time.sleep(1.0)
        log = read_sglang_log(workdir / "server.log")
        profile, report = fit_rows(single_rows + log.rows, "fit:fidelity_live/server.log")
        calib_rows = len(log.rows)
        say(f"calibrated from {len(single_rows) + len(log.rows)} log rows ({len(single_rows) + log.prefill_rows} "
            f"prefill, {log.decode_rows} decode): "
            f"{report.form} form, MAPE {report.mape:.1%}, worst {report.worst_ape:.1%}")
        # 3. every workload x policy, live and simulated
        settings = {k: v for k, v in vars(args).items() if k not in ("dir", "json", "json_out", "resimulate")}
        for wname in args.workloads.split(","):
            reqs = trace(wname, settings)
            rate = WORKLOADS[wname][1]
            for pol in policies:
                adapter.apply(parse_policy(pol))
                httpx.post(f"{url}/flush_cache", timeout=30.0).raise_for_status()
                load_before = os.getloadavg()[0]
                live = run_load(reqs, load_cfg, rate=rate, seed=args.seed).summary
                cell: dict[str, Any] = {"workload": wname, "policy": pol, "rate": rate,
                                        "live": live.model_dump(include=set(FIGURES) | {"requests", "errors"}),
                                        "host_load_1min": [load_before, os.getloadavg()[0]]}
                simulate_cell(cell, reqs, profile, settings)
                cells.append(cell)
                say(f"{wname:12s} {pol:7s} live P99 TTFT {live.ttft_p99_s:.3f} s, sim(sglang) "
                    f"{cell['sglang']['ttft_p99_s']:.3f} s, sim(ideal) {cell['ideal']['ttft_p99_s']:.3f} s")
        adapter.close()
        # how well the calibrated profile predicts the steps the server logged during the evaluation
        eval_rows = read_sglang_log(workdir / "server.log").rows[calib_rows:]
        measured = np.array([r.seconds for r in eval_rows])
        eval_ape = np.abs(predicted_s(profile, eval_rows) - measured) / measured if eval_rows else np.zeros(0)
    finally:
        server.stop()
    doc = {"profile": profile.model_dump(), "fit": {
               "form": report.form, "rows": report.rows, "mape": report.mape, "worst_ape": report.worst_ape,
               "eval_rows": len(eval_ape), "eval_mape": float(eval_ape.mean()) if len(eval_ape) else math.nan,
               "eval_worst_ape": float(eval_ape.max()) if len(eval_ape) else math.nan},
           "settings": settings, "cells": cells}
    _report(doc, args)


def trace(workload: str, settings: dict[str, Any]) -> list[Request]:
    spec, rate = WORKLOADS[workload]
    return hashed(list(make_requests(spec, rate, "poisson", num_requests=settings["num_requests"],
                                     seed=settings["seed"])))


def simulate_cell(cell: dict[str, Any], reqs: list[Request], profile: StepTimeProfile,
                  settings: dict[str, Any]) -> None:
    """Fill ``cell``'s simulated columns (and their errors against its live figures)."""
    hw = Hardware(gpu=load_gpu("h100-sxm"), model=TINY, step_profile=profile,
                  kv_capacity_tokens=settings["kv_tokens"])
    common = dict(max_running_requests=settings["max_running"], chunked_prefill_tokens=settings["chunk_tokens"])
    # schedctl load sends every request with ignore_eos: SGLang reserves all of its remaining output
    engines = {"sglang": sglang_engine_config(sglang_plugin_order=True, fixed_length_outputs=True, **common),
               "ideal": EngineConfig.model_validate(common)}
    for mode, cfg in engines.items():
        _e, s = simulate(reqs, parse_policy(cell["policy"]), hw, cfg, rate=cell["rate"],
                         warmup_s=settings["warmup_s"])
        cell[mode] = _figures(s)
        cell[f"{mode}_error"] = {f: rel_err(cell[mode][f], cell["live"][f]) for f in FIGURES}


def resimulate(doc: dict[str, Any]) -> dict[str, Any]:
    profile = StepTimeProfile.model_validate(doc["profile"])
    traces: dict[str, list[Request]] = {}
    for cell in doc["cells"]:
        if cell["workload"] not in traces:
            traces[cell["workload"]] = trace(cell["workload"], doc["settings"])
        simulate_cell(cell, traces[cell["workload"]], profile, doc["settings"])
    return doc


def _report(doc: dict[str, Any], args: argparse.Namespace) -> None:
    cells = doc["cells"]
    rankings = {}
    for wname in dict.fromkeys(c["workload"] for c in cells):
        mine = [c for c in cells if c["workload"] == wname]
        p99 = {k: {c["policy"]: c[k]["ttft_p99_s"] for c in mine} for k in ("live", "sglang", "ideal")}
        rankings[wname] = {k: ranking(v, args.tie) for k, v in p99.items()}
        rankings[wname] |= {f"same_{k}": same_ranking(p99["live"], p99[k], args.tie) for k in ("sglang", "ideal")}
    doc["rankings"] = rankings
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(doc, default=str) + "\n")
    if args.json:
        print(json.dumps(doc, default=str))
        return
    fit = doc["fit"]
    print(f"step-time profile: {fit['form']} form fitted to {fit['rows']} calibration rows of the server's log "
          f"(MAPE {fit['mape']:.1%}, worst {fit['worst_ape']:.1%}); on the {fit['eval_rows']} rows it logged during "
          f"the evaluation: MAPE {fit['eval_mape']:.1%}, worst {fit['eval_worst_ape']:.1%}")
    _print(cells, rankings)


def _figures(s: SimSummary) -> dict[str, float]:
    return {f: float(getattr(s, f)) for f in FIGURES} | {"requests": s.requests}


def _print(cells: list[dict[str, Any]], rankings: dict[str, dict[str, Any]]) -> None:
    short = {"ttft_p50_s": "TTFT p50 s", "ttft_p99_s": "TTFT p99 s", "tbt_p99_s": "TBT p99 s",
             "throughput_rps": "req/s", "cache_hit_rate": "hit rate"}
    print(f"{'workload':12s} {'policy':7s} {'figure':11s} {'live':>9s} {'sim sglang':>11s} {'err':>7s} "
          f"{'sim ideal':>10s} {'err':>7s}")
    for c in cells:
        for f in FIGURES:
            print(f"{c['workload']:12s} {c['policy']:7s} {short[f]:11s} {c['live'][f]:9.4g} {c['sglang'][f]:11.4g} "
                  f"{c['sglang_error'][f]:+7.1%} {c['ideal'][f]:10.4g} {c['ideal_error'][f]:+7.1%}")
    for mode in ("sglang", "ideal"):
        ok = [c for c in cells if all(abs(c[f"{mode}_error"][f]) <= 0.15 for f in ("ttft_p50_s", "ttft_p99_s"))
              and abs(c[f"{mode}_error"]["throughput_rps"]) <= 0.10]
        print(f"sim {mode}: {len(ok)}/{len(cells)} cells with P50 and P99 TTFT within 15% and throughput within 10%")
    loads = [x for c in cells for x in c.get("host_load_1min", [])]
    if loads:
        print(f"host load average (1 min) around the live runs: {min(loads):.1f}-{max(loads):.1f} on "
              f"{os.cpu_count()} cores; above the core count the live figures measure the other work too")
    print("\npolicies ranked by P99 TTFT (best first; ~: within the tie margin); same: every pair both runs tell "
          "apart is ordered alike")
    for w, r in rankings.items():
        print(f"  {w:12s} live {r['live']}; sim sglang {r['sglang']} (same: {r['same_sglang']}); "
              f"sim ideal {r['ideal']} (same: {r['same_ideal']})")


if __name__ == "__main__":
    main()
