"""`schedctl simulate` and `schedctl sweep`: the embedded engine from the command line."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schedctl.bench import plots
from schedctl.bench.sweep import auto_rates, best_policy_per_rate, default_jobs, sweep
from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage
from schedctl.files import InputFileError
from schedctl.policies.spec import parse_policy, policy_label
from schedctl.sim.engine import SimEngine
from schedctl.sim.records import write_request_records
from schedctl.sim.run import simulate
from schedctl.workloads.registry import (
    describe_workloads,
    load_workload_file,
    parse_arrival,
    parse_rate,
    parse_workload,
)
from schedctl.workloads.trace import read_trace, time_scaled

WORKLOAD_HELP = "workload by name and parameters, e.g. gsp or gsp:num_groups=32 (see `schedctl workloads`)"
DEFAULT_WORKLOAD, DEFAULT_RATE, DEFAULT_ARRIVAL, DEFAULT_NUM_REQUESTS = "gsp", "10", "poisson", 2000
TIME_SCALE = typer.Option(1.0, "--time-scale", help="with --trace: multiply every arrival time (0.5: the trace at "
                          "twice its load, 2: at half)")
SWEEP_WORKLOAD = "gsp:num_groups=256,system_prompt_len=4096"  # the scenarios' big-prefix stream


def _progress(enabled: bool, total: float | None, what: str) -> Progress:
    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not enabled, transient=True,
    )


def _requests(workload: str | None, workload_file: Path | None, trace: Path | None, rate: str | None,
              arrival: str | None, num_requests: int | None, duration_s: float | None,
              seed: int, time_scale: float = 1.0) -> tuple[Any, float | None]:
    """The request stream and its nominal rate, from a trace, a workload file, or the command-line form.

    A trace or a workload file says what to send: --workload, --rate and --arrival with one are an error;
    --num-requests (and, for a file, --duration-s) override the file's bound, or take the trace's first N.
    --time-scale (traces only) multiplies every arrival time: 0.5 replays the trace at twice its load."""
    source = "--trace" if trace is not None else ("--workload-file" if workload_file is not None else None)
    if trace is not None and workload_file is not None:
        raise UsageError("--trace and --workload-file: give one")
    given = {"--workload": workload, "--rate": rate, "--arrival": arrival,
             **({"--duration-s": duration_s} if trace is not None else {})}
    clash = [name for name, value in given.items() if value is not None]
    if source is not None and clash:
        raise UsageError(f"{', '.join(clash)} with {source}: the {source.removeprefix('--')} already says that "
                         "(give one or the other)")
    if time_scale != 1.0 and trace is None:
        raise UsageError("--time-scale replays a trace at another load: give --trace (a workload's load is --rate)")
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise UsageError(f"--time-scale {time_scale:g}: must be a number > 0")
    if trace is not None:
        reqs = list(time_scaled(itertools.islice(read_trace(trace), num_requests), time_scale))
        if not reqs:
            raise InputFileError(trace, "", "no requests in this trace (nothing to simulate)")
        return reqs, None
    if workload_file is not None:
        cfg = load_workload_file(workload_file)
        bounds = {k: v for k, v in (("num_requests", num_requests), ("duration_s", duration_s)) if v is not None}
        if bounds:
            cfg = cfg.model_copy(update=bounds)
        rate_rps = getattr(cfg.rate, "rate_rps", None)
        return cfg.requests(), rate_rps
    spec = parse_or_usage(parse_workload, workload or DEFAULT_WORKLOAD, "--workload")
    sched = parse_or_usage(parse_rate, rate or DEFAULT_RATE, "--rate")
    process = parse_or_usage(parse_arrival, arrival or DEFAULT_ARRIVAL, "--arrival")
    if num_requests is None and duration_s is None:
        num_requests = DEFAULT_NUM_REQUESTS
    from schedctl.workloads.registry import make_requests

    return make_requests(spec, sched, process, num_requests, duration_s, seed), getattr(sched, "rate_rps", None)


def simulate_cmd(
    workload: str | None = typer.Option(None, "--workload", help=WORKLOAD_HELP + f"; default {DEFAULT_WORKLOAD}"),
    workload_file: Path | None = typer.Option(None, "--workload-file", help="workload TOML (config/workloads/)"),
    trace: Path | None = typer.Option(None, "--trace", help="replay a JSONL trace (docs/traces.md) instead of "
                                      "generating"),
    time_scale: float = TIME_SCALE,
    rate: str | None = typer.Option(None, "--rate", help="req/s, or a schedule: steps:0=2,60=8 | ramp:... | "
                                    f"diurnal:...; default {DEFAULT_RATE}"),
    arrival: str | None = typer.Option(None, "--arrival", help=f"poisson | gamma:cv=2 | regular; default "
                                       f"{DEFAULT_ARRIVAL}"),
    num_requests: int | None = typer.Option(None, "--num-requests", min=1, help="requests to serve (default "
                                            f"{DEFAULT_NUM_REQUESTS}; overrides a workload file's bound, or the "
                                            "first N of a trace)"),
    duration_s: float | None = typer.Option(None, "--duration-s", min=0.001, help="or: arrivals during this many "
                                            "seconds (overrides a workload file's bound)"),
    policy: str = typer.Option("fcfs", "--policy", help=common.POLICY_HELP),
    gpu: str = common.GPU, model: str = common.MODEL, step_profile: Path | None = common.STEP_PROFILE,
    kv_capacity_tokens: int | None = common.KV_TOKENS, chunked_prefill_tokens: int = common.CHUNK,
    max_running_requests: int = common.MAX_RUNNING, seed: int = common.SEED,
    requests_out: Path | None = typer.Option(None, "--requests-out", help="write per-request records (JSONL)",
                                             callback=common.output_file),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG of TTFT over time and its CDF",
                                        callback=common.output_file),
    warmup_s: float = common.WARMUP, sglang_scheduler: bool = common.SGLANG_SCHEDULER,
    as_json: bool = common.JSON,
) -> None:
    """Serve one workload on the embedded engine under one policy and summarise the run."""
    spec = parse_or_usage(parse_policy, policy, "--policy")
    if not warmup_s >= 0:
        raise UsageError(f"--warmup-s {warmup_s:g}: expected seconds >= 0")
    hw = common.hardware(gpu, model, step_profile, kv_capacity_tokens)
    cfg = common.engine_config(chunked_prefill_tokens, max_running_requests, sglang_scheduler)
    reqs, rate_rps = _requests(workload, workload_file, trace, rate, arrival, num_requests, duration_s, seed,
                               time_scale)
    show = not as_json and sys.stderr.isatty()
    with _progress(show, None, "simulating") as progress:
        task = progress.add_task("run", total=None)
        events = [0]

        def tick(eng: SimEngine) -> None:
            events[0] += 1
            if events[0] % 2000 == 0:
                progress.update(task, completed=len(eng.completed))

        engine, summary = simulate(reqs, spec, hw, cfg, on_event=tick if show else None, rate=rate_rps, seed=seed,
                                   warmup_s=warmup_s)
    if requests_out is not None:
        write_request_records(requests_out, (row.record() for row in engine.completed.rows()))
        common.wrote(requests_out, "per-request records", as_json)
    if plot is not None:
        plots.run_timeline(engine.completed.column("arrival_s"), engine.completed.ttft_s(), plot,
                           f"{policy_label(spec)} on {hw.model.name} / {hw.gpu.name}")
        common.wrote(plot, "plot", as_json)
    if as_json:
        common.print_json(summary)
        return
    s = summary
    console = Console()
    console.print(common.table(
        f"{s.policy} · {hw.model.name} on {hw.gpu.name} · {s.requests} requests",
        ["TTFT p50 (s)", "p90", "p99", "max", "TBT p99 (ms)", "throughput (req/s)", "cache hit", "retractions"],
        [[s.ttft_p50_s, s.ttft_p90_s, s.ttft_p99_s, s.ttft_max_s, s.tbt_p99_s * 1e3, s.throughput_rps,
          s.cache_hit_rate, s.retractions]],
    ))
    if s.aborted or s.unfinished:
        console.print(f"[yellow]{s.aborted} aborted (too large for the KV cache), {s.unfinished} unfinished[/]")
    if s.warmup_excluded:
        console.print(f"{s.warmup_excluded} requests arriving in the first {s.warmup_s:g} s (warm-up) are left out "
                      "of the figures")


def sweep_cmd(
    workload: str = typer.Option(SWEEP_WORKLOAD, "--workload", help=WORKLOAD_HELP + "; the default is the "
                                 "big-prefix workload: more shared prefix (1M tokens) than the KV cache holds, so the "
                                 "order decides the cache hits"),
    rates: str = typer.Option("auto", "--rates", help="comma-separated req/s, or auto: light load to clearly past "
                              "saturation (from FCFS's capacity to 1.5 × LPM's, measured on a burst)"),
    policies: str = typer.Option("fcfs,klpm:2,klpm:4,lpm", "--policies", help="comma-separated: " + common.POLICY_HELP),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson | gamma:cv=2 | regular"),
    num_requests: int = typer.Option(DEFAULT_NUM_REQUESTS, "--num-requests", min=1, help="requests per run"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="runs per point (seeds 0..N-1); figures are their mean"),
    gpu: str = common.GPU, model: str = common.MODEL, step_profile: Path | None = common.STEP_PROFILE,
    kv_capacity_tokens: int | None = common.KV_TOKENS, chunked_prefill_tokens: int = common.CHUNK,
    max_running_requests: int = common.MAX_RUNNING,
    jobs: int = typer.Option(default_jobs(), "--jobs", min=1, help="parallel runs"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG of P99 TTFT against rate per policy",
                                        callback=common.output_file),
    warmup_s: float = common.WARMUP, sglang_scheduler: bool = common.SGLANG_SCHEDULER,
    as_json: bool = common.JSON,
) -> None:
    """Run every rate × policy and compare P99 TTFT (one line per policy)."""
    if not warmup_s >= 0:
        raise UsageError(f"--warmup-s {warmup_s:g}: expected seconds >= 0")
    spec = parse_or_usage(parse_workload, workload, "--workload")
    pols = common.parse_policies(policies)
    if not pols:
        raise UsageError("--policies: give at least one policy")
    parse_or_usage(parse_arrival, arrival, "--arrival")
    if seeds < 1:
        raise UsageError("--seeds must be >= 1")
    hw = common.hardware(gpu, model, step_profile, kv_capacity_tokens)
    cfg = common.engine_config(chunked_prefill_tokens, max_running_requests, sglang_scheduler)
    if rates.strip() == "auto":
        rate_list = auto_rates(spec, hw, cfg, num_requests, 0)
    else:
        try:
            rate_list = [float(r) for r in rates.split(",")]
        except ValueError:
            raise UsageError(f"--rates {rates!r}: expected comma-separated numbers or auto") from None
        if any(r <= 0 for r in rate_list):
            raise UsageError("--rates: every rate must be > 0")
    show = not as_json and sys.stderr.isatty()
    total = len(rate_list) * len(pols) * seeds
    with _progress(show, total, "sweeping") as progress:
        task = progress.add_task("sweep", total=total)
        rows = sweep(spec, rate_list, pols, hw, cfg, num_requests, list(range(seeds)), arrival, jobs,
                     on_done=lambda: progress.advance(task), warmup_s=warmup_s)
    if plot is not None:
        plots.ttft_vs_rate(rows, plot, f"{workload} · {hw.model.name} on {hw.gpu.name}")
        common.wrote(plot, "plot", as_json)
    if as_json:
        common.print_json(rows)
        return
    best = best_policy_per_rate(rows)
    Console().print(common.table(
        f"P99 TTFT (s) · {workload} · {hw.model.name} on {hw.gpu.name} · {num_requests} requests × {seeds} seed(s)"
        + (f" · first {warmup_s:g} s left out" if warmup_s else ""),
        ["rate", *[policy_label(p) for p in pols], "best", "hit rate (best)"],
        [[r, *[next(x.ttft_p99_s for x in rows if x.rate == r and x.policy == policy_label(p)) for p in pols],
          best.get(r, "-"), next(x.cache_hit_rate for x in rows if x.rate == r and x.policy == best.get(r))]
         for r in rate_list],
    ))


def workloads_cmd() -> None:
    """List the workloads, arrival processes and rate schedules with their parameters and defaults."""
    print(describe_workloads())


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("workloads")(workloads_cmd)
