"""`schedctl bench ...`: benchmark commands. `bench adaptive` runs the adaptive controller against every static
policy over the named scenarios; `bench optimality` compares FCFS, LPM, k-LPM and the adaptive controller's choice
with the exact optimum on small instances. ``bench_app`` is the typer group; other modules may add commands to
it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schedctl.bench.adaptive import (
    ADAPTIVE,
    ADAPTIVE_WHATIF,
    SWITCHING,
    BenchRow,
    RunJob,
    default_workers,
    static_policies,
    summarize,
)
from schedctl.bench.scenarios import load_scenarios
from schedctl.bench.switching import run_with_oracle
from schedctl.cli import common
from schedctl.cli.common import UsageError
from schedctl.settings import Settings, load_settings
from schedctl.sim.profiles import config_dir

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks of the controller on the embedded engine.")

STATIONARY_TARGET = 1.05  # adaptive / best static k in hindsight
NON_STATIONARY_TARGET = 0.85  # adaptive / best single static k
BASELINE_TARGET = 1.05  # adaptive / FCFS and / LPM, everywhere
SWITCHING_TARGET = 1.10  # adaptive / the hindsight switching oracle, everywhere


def _default_config() -> Path | None:
    path = config_dir() / "sidecar.sim.toml"
    return path if path.exists() else None


def verdict(row: BenchRow) -> str:
    """Which targets a scenario's adaptive row meets ('ok', or what is missed)."""
    missed = []
    target = STATIONARY_TARGET if row.kind == "stationary" else NON_STATIONARY_TARGET
    if row.ratio_to_best_static > target:
        missed.append(f"best static > {target:g}")
    if row.ratio_to_switching > SWITCHING_TARGET:
        missed.append(f"oracle > {SWITCHING_TARGET:g}")
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
    whatif: str | None = typer.Option(
        None, "--whatif", help="what-if replay in the adaptive runs: off, on, or both (two adaptive rows); "
        "default: the settings' [whatif] enabled"),
    whatif_mode: str | None = typer.Option(None, "--whatif-mode", help="prior or filter (default: the settings')"),
    step_profile: Path | None = common.STEP_PROFILE,
    warmup_s: float = common.WARMUP,
    as_json: bool = common.JSON,
) -> None:
    """P99 TTFT of the adaptive controller against every static policy, FCFS, LPM, the best static policy and the
    hindsight switching oracle (the best static policy of each phase), as ratios; SLO attainment beside."""
    path = config if config is not None else _default_config()
    settings = load_settings(path) if path is not None else Settings()
    common.check_sim_settings(settings, path)
    if whatif not in (None, "off", "on", "both"):
        raise UsageError(f"--whatif: {whatif!r} is not off, on or both")
    if not warmup_s >= 0:
        raise UsageError(f"--warmup-s {warmup_s:g}: expected seconds >= 0")
    if whatif_mode not in (None, "prior", "filter"):
        raise UsageError(f"--whatif-mode: {whatif_mode!r} is not prior or filter")
    known = load_scenarios(scenarios_file)
    if scenarios.strip() == "all":
        names = [n for n, sc in known.items() if sc.in_bench]
    else:
        names = [s.strip() for s in scenarios.split(",") if s.strip()]
    for name in names:
        if name not in known:
            raise UsageError(f"--scenarios: unknown scenario {name!r} (known: {', '.join(known)})")
    sim = settings.engine.sim
    hw = common.hardware(sim.gpu, sim.model, step_profile, None)
    cfg = common.engine_config(sim.chunked_prefill_tokens, sim.max_running_requests)
    params = settings.controller_params()
    replay = whatif or ("on" if params.whatif.enabled else "off")
    params = params.model_copy(update={"whatif": params.whatif.model_copy(
        update={"enabled": replay == "on", **({"mode": whatif_mode} if whatif_mode else {})})})
    adaptives = [ADAPTIVE, ADAPTIVE_WHATIF] if replay == "both" else [ADAPTIVE]
    statics = static_policies(params)
    run = [
        RunJob(scenario=known[n], seed=s, policy=p, controller=params, hardware=hw, engine=cfg,
               tick_interval_s=settings.service.tick_interval_s, warmup_s=warmup_s)
        for n in names for s in range(seeds if known[n].seeded else 1) for p in [*adaptives, *statics]
    ]
    show = not as_json and sys.stderr.isatty()
    with Progress(TextColumn("bench adaptive"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("runs", total=len(run))
        results = run_with_oracle(run, statics, jobs, on_done=lambda: progress.advance(task))
    rows = summarize([known[n] for n in names], results, statics)
    if as_json:
        common.print_json(rows)
        return
    by = {(r.scenario, r.policy): r for r in rows}
    both = replay == "both"
    wi = f"what-if {params.whatif.mode}" if both else ("what-if replay " + params.whatif.mode if replay == "on"
                                                        else "no what-if replay")
    slo_s = params.objective.ttft_target_s
    table = common.table(
        f"P99 TTFT (s), mean of {seeds} seed(s) (trace scenarios: 1) · {hw.model.name} on {hw.gpu.name} · tick "
        f"{settings.service.tick_interval_s:g} s · {wi} · targets: stationary ≤ {STATIONARY_TARGET:g}× best static, "
        f"non-stationary ≤ {NON_STATIONARY_TARGET:g}×, ≤ {SWITCHING_TARGET:g}× the switching oracle, "
        f"≤ {BASELINE_TARGET:g}× FCFS and LPM",
        ["scenario", "kind", *adaptives, *statics, "best static", "oracle", "÷ best",
         *(["÷ best (what-if)"] if both else []), "÷ oracle", "÷ fcfs", "÷ lpm", "target",
         *(["target (what-if)"] if both else [])],
        [[n, known[n].kind, *[by[(n, a)].ttft_p99_s for a in adaptives], *[by[(n, p)].ttft_p99_s for p in statics],
          by[(n, ADAPTIVE)].best_static, by[(n, SWITCHING)].ttft_p99_s, by[(n, ADAPTIVE)].ratio_to_best_static,
          *([by[(n, ADAPTIVE_WHATIF)].ratio_to_best_static] if both else []), by[(n, ADAPTIVE)].ratio_to_switching,
          by[(n, ADAPTIVE)].ratio_to_fcfs, by[(n, ADAPTIVE)].ratio_to_lpm, verdict(by[(n, ADAPTIVE)]),
          *([verdict(by[(n, ADAPTIVE_WHATIF)])] if both else [])] for n in names],
    )
    console = Console(width=max(160, Console().width))
    console.print(table)
    console.print(common.table(
        f"SLO attainment (share of requests with TTFT ≤ {slo_s:g} s), mean over seeds; the oracle's policy per phase",
        ["scenario", *adaptives, SWITCHING, "best static", "best static (attainment)", "oracle's phases"],
        [[n, *[by[(n, a)].attainment for a in adaptives], by[(n, SWITCHING)].attainment, by[(n, ADAPTIVE)].best_static,
          by[(n, by[(n, ADAPTIVE)].best_static)].attainment, " → ".join(by[(n, SWITCHING)].schedule or [])]
         for n in names],
    ))


def _names(value: str, known: tuple[str, ...], option: str) -> list[str]:
    names = list(known) if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in known:
            raise UsageError(f"{option}: unknown value {n!r} (known: {', '.join(known)})")
    return names


@bench_app.command("optimality")
def optimality_cmd(
    families: str = typer.Option("all", "--families", help="rasq, tree@1.5, tree@10 (comma-separated) or all"),
    caches: str = typer.Option("all", "--caches", help="radix, last_prompt (comma-separated) or all"),
    objectives: str = typer.Option("all", "--objectives", help="max_ttft, late_count (comma-separated) or all"),
    instances: int = typer.Option(30, "--instances", min=1, help="held-out instances per family, cache, objective"),
    train: int = typer.Option(60, "--train", min=1, help="training instances the adaptive controller learns from"),
    queries: int = typer.Option(12, "--queries", min=2, max=14, help="queries per instance"),
    config: Path | None = typer.Option(None, "--config", help="settings whose [tuner] the adaptive rows use"),
    jobs: int = typer.Option(default_workers(), "--jobs", min=1, help="parallel cells"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG of the ratios",
                                        callback=common.output_file),
    as_json: bool = common.JSON,
) -> None:
    """Ratio to the exact optimum of FCFS, LPM, k-LPM and the adaptive controller's choice, on seeded instances."""
    from schedctl.bench import optimality as opt
    from schedctl.bench.sweep import pool_map

    path = config if config is not None else _default_config()
    settings = load_settings(path) if path is not None else Settings()
    cache_names = _names(caches, opt.CACHES, "--caches")
    cells = opt.jobs_for(_names(families, opt.FAMILIES, "--families"), [c for c in opt.CACHES if c in cache_names],
                         _names(objectives, opt.OBJECTIVES, "--objectives"), queries, instances, train,
                         settings.controller_params().tuner)
    show = not as_json and sys.stderr.isatty()
    with Progress(TextColumn("bench optimality"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("cells", total=len(cells))
        rows = opt.summarize(pool_map(opt.run_cell, cells, jobs, on_done=lambda: progress.advance(task)))
    if plot is not None:
        opt.plot(rows, plot)
        common.wrote(plot, "plot", as_json)
    if as_json:
        common.print_json(rows)
        return
    console = Console(width=max(120, Console().width))
    for fam, obj in dict.fromkeys((r.family, r.objective) for r in rows):
        mine = [r for r in rows if r.family == fam and r.objective == obj]
        used = [c for c in opt.CACHES if any(r.cache == c for r in mine)]
        by = {(r.cache, r.policy): r for r in mine}
        policies = list(dict.fromkeys(r.policy for r in mine))

        def mean(r: opt.OptimalityRow) -> str:
            return f"{r.mean_ratio:.3f}" + (f" +{r.unbounded}∞" if r.unbounded else "")

        console.print(common.table(
            f"{fam} · {obj} · policy / optimum, {instances} held-out instances of {queries} queries each",
            ["policy", *[f"{h} ({c})" for c in used for h in ("mean", "worst")], "instances"],
            [[p, *[v for c in used for v in (mean(by[(c, p)]), f"{by[(c, p)].worst_ratio:.3f}")], instances]
             for p in policies],
        ))
        for p in policies:
            chose = [f"{c}: " + ", ".join(f"{a}×{n}" for a, n in by[(c, p)].choices.items())
                     for c in used if by[(c, p)].choices]
            if chose:
                console.print(f"  {p} played " + "; ".join(chose))
    console.print("+N∞: instances where the optimum is 0 and the policy is not (left out of mean and worst)")
    hindsight = {(r.cache, r.objective): r for r in rows if r.family == opt.PAPER_FAMILY and r.policy == opt.HINDSIGHT}
    for r, ok in opt.target_cells(rows):
        best = hindsight.get((r.cache, r.objective))
        console.print(f"target (adaptive ≤ {opt.TARGET_MEAN_RATIO:g}× optimum on average, {r.family}) {r.cache} "
                      f"{r.objective}: {r.mean_ratio:.3f}{f' (+{r.unbounded} ∞)' if r.unbounded else ''} — "
                      f"{'met' if ok else 'not met'}"
                      + (f"; best k in hindsight {best.mean_ratio:.3f}" if best is not None else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
