"""`schedctl trace write`: save any workload, workload file or scenario as a JSONL trace (docs/traces.md), to
replay with `simulate --trace` or send with `load --trace`."""

from __future__ import annotations

from pathlib import Path

import typer

from schedctl.bench.scenarios import get_scenario, scenario_requests
from schedctl.cli import common
from schedctl.cli.common import UsageError
from schedctl.cli.sim import DEFAULT_ARRIVAL, DEFAULT_NUM_REQUESTS, DEFAULT_RATE, DEFAULT_WORKLOAD, _requests
from schedctl.workloads.trace import write_trace

trace_app = typer.Typer(no_args_is_help=True, help="Request traces (JSONL, docs/traces.md).")


@trace_app.command("write")
def write_cmd(
    out: Path = typer.Argument(..., help="the trace file to write (JSON lines)", callback=common.output_file),
    workload: str | None = typer.Option(None, "--workload", help="workload by name and parameters, e.g. "
                                        f"gsp:num_groups=32 (see `schedctl workloads`); default {DEFAULT_WORKLOAD}"),
    workload_file: Path | None = typer.Option(None, "--workload-file", help="workload TOML (config/workloads/)"),
    scenario: str | None = typer.Option(None, "--scenario", help="a named scenario (config/scenarios.toml or "
                                        "--scenarios-file): its phases, back to back"),
    scenarios_file: Path | None = typer.Option(None, "--scenarios-file", help="default: config/scenarios.toml"),
    rate: str | None = typer.Option(None, "--rate", help=f"req/s or a schedule (steps:0=2,60=8 ...); default "
                                    f"{DEFAULT_RATE}"),
    arrival: str | None = typer.Option(None, "--arrival", help=f"poisson | gamma:cv=2 | regular; default "
                                       f"{DEFAULT_ARRIVAL}"),
    num_requests: int | None = typer.Option(None, "--num-requests", min=1, help="requests to write (default "
                                            f"{DEFAULT_NUM_REQUESTS}; overrides a workload file's bound)"),
    duration_s: float | None = typer.Option(None, "--duration-s", min=0.001, help="or: arrivals during this many "
                                            "seconds"),
    seed: int = common.SEED,
) -> None:
    """Write the requests a workload, a workload file or a scenario generates as a trace, same seed same file."""
    if scenario is not None:
        given = [n for n, v in (("--workload", workload), ("--workload-file", workload_file), ("--rate", rate),
                                ("--arrival", arrival), ("--num-requests", num_requests),
                                ("--duration-s", duration_s)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} with --scenario: the scenario already says that (give one)")
        requests = scenario_requests(get_scenario(scenario, scenarios_file), seed)
    else:
        requests, _rate = _requests(workload, workload_file, None, rate, arrival, num_requests, duration_s, seed)
    count = write_trace(out, requests)
    if count == 0:
        out.unlink()
        raise UsageError("no requests to write (a workload file with num_requests = 0?)")
    common.wrote(out, f"trace of {count} requests")


def register(app: typer.Typer) -> None:
    app.add_typer(trace_app, name="trace")
