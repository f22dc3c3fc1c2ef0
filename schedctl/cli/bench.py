"""`schedctl bench ...`: benchmark commands. `bench adaptive` runs the adaptive controller against every static
policy over the named scenarios. ``bench_app`` is the typer group; other modules may add commands to it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schedctl.bench.adaptive import ADAPTIVE, BenchRow, RunJob, default_workers, run_jobs, static_policies, summarize
from schedctl.bench.scenarios import load_scenarios
from schedctl.cli import common
from schedctl.cli.common import UsageError
from schedctl.settings import Settings, load_settings
from schedctl.sim.profiles import config_dir

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks of the controller on the embedded engine.")

STATIONARY_TARGET = 1.05  # adaptive / best static k in hindsight
NON_STATIONARY_TARGET = 0.85  # adaptive / best single static k
BASELINE_TARGET = 1.05  # adaptive / FCFS and / LPM, everywhere


def _default_config() -> Path | None:
    path = config_dir() / "sidecar.sim.toml"
    return path if path.exists() else None


def verdict(row: BenchRow) -> str:
    """Which targets a scenario's adaptive row meets ('ok', or what is missed)."""
    missed = []
    target = STATIONARY_TARGET if row.kind == "stationary" else NON_STATIONARY_TARGET
    if row.ratio_to_best_static > target:
        missed.append(f"best static > {target:g}")
    if row.ratio_to_fcfs > BASELINE_TARGET:
        missed.append(f"fcfs > {BASELINE_TARGET:g}")
    if row.ratio_to_lpm > BASELINE_TARGET:
        missed.append(f"lpm > {BASELINE_TARGET:g}")
    return "ok" if not missed else "missed: " + ", ".join(missed)


@bench_app.command("adaptive")
def adaptive_cmd(
    scenarios: str = typer.Option("all", "--scenarios", help="comma-separated names, or all (the bench suite)"),
    seeds: int = typer.Option(3, "--seeds", min=1, help="runs per scenario and policy (seeds 0..N-1)"),
    config: Path | None = typer.Option(None, "--config", help="sidecar settings (default: config/sidecar.sim.toml)"),
    scenarios_file: Path | None = typer.Option(None, "--scenarios-file", help="default: config/scenarios.toml"),
    jobs: int = typer.Option(default_workers(), "--jobs", min=1, help="parallel runs"),
    as_json: bool = common.JSON,
) -> None:
    """P99 TTFT of the adaptive controller against every static k, FCFS, LPM and the best static k, as ratios."""
    path = config if config is not None else _default_config()
    settings = load_settings(path) if path is not None else Settings()
    known = load_scenarios(scenarios_file)
    if scenarios.strip() == "all":
        names = [n for n, sc in known.items() if sc.in_bench]
    else:
        names = [s.strip() for s in scenarios.split(",") if s.strip()]
    for name in names:
        if name not in known:
            raise UsageError(f"--scenarios: unknown scenario {name!r} (known: {', '.join(known)})")
    sim = settings.engine.sim
    hw = common.hardware(sim.gpu, sim.model, None, None)
    cfg = common.engine_config(sim.chunked_prefill_tokens, sim.max_running_requests)
    params = settings.controller_params()
    statics = static_policies(params)
    run = [
        RunJob(scenario=known[n], seed=s, policy=p, controller=params, hardware=hw, engine=cfg,
               tick_interval_s=settings.service.tick_interval_s)
        for n in names for s in range(seeds) for p in [ADAPTIVE, *statics]
    ]
    show = not as_json and sys.stderr.isatty()
    with Progress(TextColumn("bench adaptive"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("runs", total=len(run))
        results = run_jobs(run, jobs, on_done=lambda: progress.advance(task))
    rows = summarize([known[n] for n in names], results, statics)
    if as_json:
        common.print_json(rows)
        return
    by = {(r.scenario, r.policy): r for r in rows}
    table = common.table(
        f"P99 TTFT (s), mean of {seeds} seed(s) · {hw.model.name} on {hw.gpu.name} · tick "
        f"{settings.service.tick_interval_s:g} s · targets: stationary ≤ {STATIONARY_TARGET:g}× best static, "
        f"non-stationary ≤ {NON_STATIONARY_TARGET:g}×, ≤ {BASELINE_TARGET:g}× FCFS and LPM",
        ["scenario", "kind", ADAPTIVE, *statics, "best static", "÷ best", "÷ fcfs", "÷ lpm", "target"],
        [[n, known[n].kind, by[(n, ADAPTIVE)].ttft_p99_s, *[by[(n, p)].ttft_p99_s for p in statics],
          by[(n, ADAPTIVE)].best_static, by[(n, ADAPTIVE)].ratio_to_best_static, by[(n, ADAPTIVE)].ratio_to_fcfs,
          by[(n, ADAPTIVE)].ratio_to_lpm, verdict(by[(n, ADAPTIVE)])] for n in names],
    )
    Console(width=max(160, Console().width)).print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
