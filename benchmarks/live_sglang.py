"""Queue policies on a live SGLang 0.5.23 server on this CPU, side by side in one run.

    .venv-sglang/bin/python benchmarks/live_sglang.py [--quick] [--json]

One real server (``schedctl sglang serve --cpu`` flags, a tiny random-weight Llama: 2 layers, hidden 256, vocab
32,000) with a KV cache of 4,096 tokens and at most 4 running requests, so that queues form and the shared
prefixes do not all fit in the cache. Traffic from ``schedctl load``'s engine over 127.0.0.1; the cache is
flushed before each run; cache hit rate is SGLang's own ``cached_tokens`` over ``prompt_tokens``.

Two workloads (gsp: shared system prompts, unique questions, 8 output tokens):

* ``stream``: 8 system prompts of 1,024 tokens (8,192 tokens of prefixes, twice the cache), 64-token questions,
  Poisson arrivals at ``--rate`` (past FCFS's capacity here, within LPM's) for ``--duration-s``; fewer
  than 128 wait, so SGLang's own LPM matches prefixes. Policies: fcfs, SGLang's own ``--schedule-policy
  lpm`` (the plugin off), the plugin's lpm, klpm:2, klpm:4, and the adaptive sidecar (``schedctl run``, a
  tick every 2 s, arms k = 1, 2, 4, inf).
* ``burst``: 32 system prompts of 512 tokens, 512 requests at once — more than 128 wait, where SGLang's own LPM
  turns into FCFS (``WAITING_QUEUE_PREFIX_MATCH_MAX``) and the plugin keeps ordering by prefix.

Figures depend on this machine's load (on 2 shared cores one run's figures moved 2-3x): compare the rows of one
run, not runs; ``--repeats N`` runs N rounds with the policies interleaved and prints each figure's median.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from rich.console import Console
from rich.table import Table

from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.launcher import ServerProcess, tiny_cpu_server
from schedctl.loadgen.runner import LoadConfig, run_load
from schedctl.policies.spec import parse_policy
from schedctl.workloads.registry import make_requests

KV_TOKENS, MAX_RUNNING, VOCAB, TICK_S = 4096, 4, 32000, 2.0
STREAM = "gsp:num_groups=8,prompts_per_group=16,system_prompt_len=1024,question_len=64,output_len=8"
BURST = "gsp:num_groups=32,prompts_per_group=16,system_prompt_len=512,question_len=32,output_len=8"
STATIC = ["fcfs", "sglang-lpm", "lpm", "klpm:2", "klpm:4"]


def sidecar_settings(directory: Path, url: str) -> Path:
    """The shipped SGLang sidecar settings (config/sidecar.sglang.toml), pointed at this server: active, a tick
    every TICK_S, arms k = 1, 2, 4, inf, a dwell of 2 ticks, no API."""
    settings = tomllib.loads((Path(__file__).parents[1] / "config" / "sidecar.sglang.toml").read_text())
    settings["tuner"]["arms"] = [1, 2, 4, "inf"]
    settings["guard"]["min_dwell_ticks"] = 2
    settings["engine"]["sglang"]["base_url"] = url
    settings["service"].update(tick_interval_s=TICK_S, mode="active")
    settings["log"]["path"] = str(directory / "decisions.jsonl")
    settings["api"]["enabled"] = False
    path = directory / "sidecar.toml"
    path.write_text(tomli_w.dumps(settings))
    return path


def run_one(server: ServerProcess, workdir: Path, workload: str, policy: str, rate: float, num: int,
            seed: int) -> dict[str, Any]:
    adapter = SGLangAdapter(server.url, timeout_s=10.0)
    try:
        adapter.apply(None if policy in ("sglang-lpm", "adaptive") else parse_policy(policy))
    finally:
        adapter.close()
    httpx.post(f"{server.url}/flush_cache", timeout=30.0).raise_for_status()
    sidecar = None
    if policy == "adaptive":
        cfg = sidecar_settings(workdir, server.url)
        sidecar = subprocess.Popen([str(Path(sys.executable).with_name("schedctl")), "run", "--config", str(cfg)],
                                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        time.sleep(TICK_S)
        if sidecar.poll() is not None:
            raise SystemExit(f"the sidecar exited with status {sidecar.returncode}; see its message above")
    try:
        reqs = make_requests(workload, rate, num_requests=num, seed=seed)
        s = run_load(reqs, LoadConfig(url=server.url, vocab_size=VOCAB, request_timeout_s=300.0)).summary
    finally:
        if sidecar is not None:
            sidecar.send_signal(signal.SIGTERM)
            sidecar.wait(timeout=60)
    return {"policy": policy, "requests": s.requests, "errors": s.errors + s.timeouts, "ttft_p50_s": s.ttft_p50_s,
            "ttft_p99_s": s.ttft_p99_s, "cache_hit_rate": s.cache_hit_rate, "throughput_rps": s.throughput_rps}


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds of one policy (errors summed)."""
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k not in ("policy", "errors")}
    return {"policy": rows[0]["policy"], "rounds": len(rows), "errors": sum(r["errors"] for r in rows), **out}


def table(title: str, rows: list[dict[str, Any]]) -> Table:
    fcfs = next(r for r in rows if r["policy"] == "fcfs")
    t = Table(title=title, header_style="bold")
    for col in ["policy", "requests", "errors", "P50 TTFT (s)", "P99 TTFT (s)", "P99 ÷ fcfs", "cache hit",
                "req/s"]:
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        t.add_row(r["policy"], f"{r['requests']:.0f}", str(r["errors"]), f"{r['ttft_p50_s']:.2f}",
                  f"{r['ttft_p99_s']:.2f}", f"{r['ttft_p99_s'] / fcfs['ttft_p99_s']:.2f}",
                  f"{r['cache_hit_rate']:.3f}", f"{r['throughput_rps']:.1f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=12.0, help="stream: requests/s (Poisson)")
    ap.add_argument("--duration-s", type=float, default=60.0, help="stream: seconds of arrivals")
    ap.add_argument("--burst", type=int, default=512, help="burst: requests at once")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="30 s of stream, a burst of 256")
    ap.add_argument("--only", choices=["stream", "burst"], help="run one of the two workloads")
    ap.add_argument("--repeats", type=int, default=1, choices=range(1, 11), metavar="N",
                    help="rounds (seeds SEED..SEED+N-1), policies interleaved; each figure is the median")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    duration_s, burst = (30.0, 256) if args.quick else (args.duration_s, args.burst)
    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 110)
    with tempfile.TemporaryDirectory(prefix="live-sglang-") as tmp:
        workdir = Path(tmp)
        server = tiny_cpu_server(workdir, sglang_args=["--max-total-tokens", str(KV_TOKENS),
                                                       "--max-running-requests", str(MAX_RUNNING)])
        with server:
            console.print(f"starting SGLang on the CPU at {server.url} (log: {workdir / 'server.log'}) ...")
            server.wait_healthy(600)
            n_stream = int(args.rate * duration_s)
            plans = [("stream", STREAM, p, args.rate, n_stream) for p in [*STATIC, "adaptive"]
                     if args.only != "burst"]
            plans += [("burst", BURST, p, 1e6, burst) for p in ["fcfs", "sglang-lpm", "lpm", "klpm:4"]
                      if args.only != "stream"]
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for round_ in range(args.repeats):  # rounds interleave the policies, so slow spells hit them all
                for name, workload, policy, rate, num in plans:
                    row = run_one(server, workdir, workload, policy, rate, num, args.seed + round_)
                    runs.setdefault((name, policy), []).append(row)
                    console.print(f"  round {round_ + 1}/{args.repeats} {name} {policy}: done")
    stream = [median_row(rows) for (name, _), rows in runs.items() if name == "stream"]
    bursts = [median_row(rows) for (name, _), rows in runs.items() if name == "burst"]
    if args.json:
        print(json.dumps({"stream": stream, "burst": bursts}, indent=2))
        return
    if stream:
        console.print(table(f"stream: {STREAM}, Poisson {args.rate:g} req/s for {duration_s:g} s"
                            + (f", median of {args.repeats} rounds" if args.repeats > 1 else ""), stream))
    if bursts:
        waiting = "more than 128 wait" if burst > 128 else "at most 128 wait"
        console.print(table(f"burst: {BURST}, {burst} at once ({waiting})", bursts))
    console.print(f"KV cache {KV_TOKENS} tokens, at most {MAX_RUNNING} running; sglang-lpm = SGLang's own "
                  "--schedule-policy lpm (plugin off); adaptive = the sidecar choosing k every "
                  f"{TICK_S:g} s")


if __name__ == "__main__":
    main()
