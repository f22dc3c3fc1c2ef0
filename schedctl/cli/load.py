"""`schedctl load`: replay a workload or a JSONL trace against a live HTTP engine and measure it (docs/load.md)."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage, report_error
from schedctl.files import InputFileError, validation_message
from schedctl.loadgen import DEFAULT_URL, Api, LoadConfig, LoadResult, check_url, retime, run_load
from schedctl.sim.records import write_request_records
from schedctl.workloads.registry import make_requests, parse_rate, parse_workload
from schedctl.workloads.trace import read_trace
from schedctl.workloads.types import SYNTHETIC_TOKEN_BASE, Request

DEFAULT_NUM_REQUESTS = 200
WORKLOAD_VOCAB_SIZE = 32000  # a workload's synthetic ids are hashed into this many unless --vocab-size says otherwise
EXIT_INTERRUPTED = 130


class _Stream(NamedTuple):
    requests: Iterable[Request]  # arrival_s = the offset to send at
    rate_rps: float | None  # nominal, for the summary
    vocab_size: int | None  # to fit token ids into
    total: int | None  # requests to send at most, when known (the progress bar)


def _stream(workload: str | None, trace: Path | None, rate: str | None, num_requests: int | None,
            duration_s: float | None, seed: int | None, time_scale: float, vocab_size: int | None) -> _Stream:
    """What to send, from the options; every conflict between options is an error."""
    if workload is not None and trace is not None:
        raise UsageError("--workload and --trace: give one (a trace already says which requests to send)")
    if rate is not None and time_scale != 1.0:
        raise UsageError("--rate and --time-scale: give one (--rate re-times every arrival)")
    if not time_scale > 0:
        raise UsageError(f"--time-scale {time_scale}: must be > 0")
    if num_requests is not None and num_requests < 1:
        raise UsageError(f"--num-requests {num_requests}: must be >= 1")
    sched = parse_or_usage(parse_rate, rate, "--rate") if rate is not None else None
    nominal = getattr(sched, "rate_rps", None)
    if trace is not None:
        if seed is not None and sched is None:
            raise UsageError("--seed with --trace only draws the arrival times of --rate: give --rate too, "
                             "or no --seed")
        try:
            requests = list(itertools.islice(read_trace(trace), num_requests))
        except InputFileError as exc:
            raise InputFileError(exc.path, exc.where, f"{exc.reason} (the trace is checked whole before sending: "
                                 "nothing was sent)") from None
        if not requests:
            raise InputFileError(trace, "", "no requests in this trace (nothing to send)")
        if vocab_size is None and any(r.prompt and max(r.prompt) >= SYNTHETIC_TOKEN_BASE for r in requests):
            raise UsageError(f"--trace {trace}: it has synthetic token ids (>= 2**24, from a schedctl workload), "
                             "which no model's vocabulary holds: pass --vocab-size N (the model's vocabulary)")
        return _Stream(retime(requests, sched, seed or 0, time_scale), nominal, vocab_size, len(requests))
    spec = parse_or_usage(parse_workload, workload or "gsp", "--workload")
    if num_requests is None and duration_s is None:
        num_requests = DEFAULT_NUM_REQUESTS
    reqs = make_requests(spec, sched if sched is not None else 10.0, None, num_requests, duration_s, seed or 0)
    return _Stream(retime(reqs, None, 0, time_scale), nominal if sched is not None else 10.0,
                   vocab_size or WORKLOAD_VOCAB_SIZE, num_requests)


def load_cmd(
    url: str = typer.Option(DEFAULT_URL, "--url", help="the engine's base URL (loopback only, see --allow-remote)"),
    api: Api = typer.Option(Api.SGLANG, "--api", help="sglang: POST /generate with input_ids; "
                            "openai: POST /v1/completions with token-id prompts"),
    workload: str | None = typer.Option(None, "--workload", help="workload by name and parameters, e.g. "
                                        "gsp:num_groups=8 (see `schedctl workloads`; default gsp)"),
    trace: Path | None = typer.Option(None, "--trace", help="replay a JSONL trace (checked whole before sending)"),
    rate: str | None = typer.Option(None, "--rate", help="req/s or a schedule (steps:0=2,60=8 ...): a workload's "
                                    "rate (default 10); with --trace, Poisson re-timing of its arrivals"),
    time_scale: float = typer.Option(1.0, "--time-scale", help="multiply every arrival offset (0.5: twice as fast)"),
    num_requests: int | None = typer.Option(None, "--num-requests", help="send at most this many "
                                            f"(a workload without --duration-s: {DEFAULT_NUM_REQUESTS})"),
    seed: int | None = typer.Option(None, "--seed", help="seed of the workload or of --rate's re-timing (default 0)"),
    duration_s: float | None = typer.Option(None, "--duration-s", help="send nothing after this many seconds"),
    warmup_s: float = typer.Option(0.0, "--warmup-s", help="leave requests sent in the first N s out of the summary"),
    request_timeout_s: float = typer.Option(60.0, "--request-timeout-s", help="a request not done by then times out"),
    max_inflight: int = typer.Option(256, "--max-inflight", help="requests in flight at once"),
    requests_out: Path | None = typer.Option(None, "--requests-out", help="write per-request records (JSONL, the "
                                             "format of `schedctl simulate --requests-out`)",
                                             callback=common.output_file),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow a URL whose host is not loopback"),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="the model's vocabulary: token ids at or above "
                                          "it are hashed into it, equal ids staying equal (default for a workload: "
                                          f"{WORKLOAD_VOCAB_SIZE}; a trace's ids go as they are)"),
    as_json: bool = common.JSON,
) -> None:
    """Send a workload or trace to a live engine, open loop, and report TTFT, TBT and throughput as `simulate` does."""
    try:
        cfg = LoadConfig(url=url, api=api, duration_s=duration_s, warmup_s=warmup_s,
                         request_timeout_s=request_timeout_s, max_inflight=max_inflight, allow_remote=allow_remote,
                         vocab_size=vocab_size)
    except ValidationError as exc:
        field, reason = validation_message(exc)
        raise UsageError(f"--{field.replace('_', '-')}: {reason}") from None
    if duration_s is not None and warmup_s >= duration_s:
        raise UsageError(f"--warmup-s {warmup_s:g} >= --duration-s {duration_s:g}: nothing would be measured")
    try:
        check_url(url, allow_remote)
    except ValueError as exc:
        raise UsageError(f"--url {url}: {exc}") from None
    stream = _stream(workload, trace, rate, num_requests, duration_s, seed, time_scale, vocab_size)
    cfg = cfg.model_copy(update={"vocab_size": stream.vocab_size})
    show = not as_json and sys.stderr.isatty()
    with Progress(TextColumn("load"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("load", total=stream.total, status="")
        counts: Counter[str] = Counter()

        def on_result(r: object) -> None:
            counts[getattr(r, "status", "?")] += 1
            progress.update(task, advance=1, status=" ".join(f"{k} {v}" for k, v in sorted(counts.items())))

        result = run_load(stream.requests, cfg, on_result=on_result if show else None, rate=stream.rate_rps,
                          seed=seed)
    if requests_out is not None:
        try:
            write_request_records(requests_out, result.records())
        except OSError as exc:
            report_error(f"--requests-out {requests_out}: cannot write ({exc.strerror or exc}); the summary follows")
            requests_out = None
    if requests_out is not None:
        common.wrote(requests_out, "per-request records", as_json)
    _report(result, as_json, requests_out)


def _report(result: LoadResult, as_json: bool, requests_out: Path | None) -> None:
    s = result.summary
    if as_json:
        common.print_json(s)
    elif s.requests:
        Console().print(common.table(
            f"{s.url} ({s.api}) · {s.requests} of {s.sent} requests finished",
            ["TTFT p50 (s)", "p90", "p99", "TBT p99 (ms)", "req/s", "cache hit", "errors", "timeouts"],
            [[s.ttft_p50_s, s.ttft_p90_s, s.ttft_p99_s, s.tbt_p99_s * 1e3, s.throughput_rps, s.cache_hit_rate,
              s.errors, s.timeouts]],
        ))
    if s.warmup_excluded and not as_json:
        Console().print(f"{s.warmup_excluded} requests sent in the first {s.warmup_s:g} s (warm-up) are left out "
                        "of these figures")
    reasons = Counter(r.error for r in result.results if r.error)
    written = f"; what was measured is written to {requests_out}" if requests_out is not None else ""
    if result.stop_reason == "input_error" and result.input_error is not None:
        report_error(f"{result.input_error} (stopped sending there; {len(result.results)} requests were sent{written})")
        raise typer.Exit(2)
    if result.stop_reason == "interrupted":
        report_error(f"interrupted (Ctrl-C) after {len(result.results)} requests were sent, {s.requests} finished"
                     f"{written}")
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.unreachable:
        report_error(f"{s.url}: server unreachable: all {len(result.results)} requests failed to connect "
                     f"({next(iter(reasons))}){written}")
        raise typer.Exit(1)
    if result.results and not any(r.status == "ok" for r in result.results):
        reason, n = reasons.most_common(1)[0] if reasons else ("no reason recorded", 0)
        report_error(f"{s.url}: every request failed ({len(result.results)}; most often, {n}x: {reason}){written}")
        raise typer.Exit(1)
    measured = Counter(r.error for r in result.results if r.error and r.scheduled_s >= s.warmup_s)
    if measured and not as_json:
        for reason, n in measured.most_common(3):
            Console(stderr=True, soft_wrap=True).print(f"{n} x {reason}", style="yellow", highlight=False,
                                                       markup=False)


def register(app: typer.Typer) -> None:
    app.command("load")(load_cmd)
