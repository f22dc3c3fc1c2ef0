"""`schedctl plan`: the cheapest fleet (GPU types × replicas) and policy that meets an SLO, by simulated annealing."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage
from schedctl.files import InputFileError, validation_message
from schedctl.planner import (
    SLO,
    AnnealConfig,
    FleetEvaluator,
    Objective,
    Plan,
    PlanningProblem,
    PlanScore,
    PlanSpace,
    SearchResult,
    anneal,
    offerings_from_catalog,
    reanneal,
)
from schedctl.planner.plot import cost_vs_attainment
from schedctl.policies.spec import policy_label
from schedctl.sim.profiles import config_dir, known_models, load_model
from schedctl.workloads.registry import WorkloadConfig, load_workload_file, parse_arrival, parse_rate, parse_workload


class PlanReport(BaseModel):
    """What `schedctl plan --json` prints."""

    feasible: bool
    best: PlanScore  # the cheapest plan meeting the SLO; if none was found, the closest one
    runners_up: list[PlanScore]
    method: str
    evaluations: int
    plans_in_space: int
    simulations: int
    stopped: str
    elapsed_s: float
    skipped_gpus: dict[str, str]
    slo: SLO
    objective: Objective


def parse_slo(text: str) -> SLO:
    """``ttft_s=0.5,tbt_s=0.1,attainment=0.99`` -> SLO (attainment defaults to 0.99)."""
    items: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key:
            raise ValueError(f"{part.strip()!r} is not FIELD=VALUE (fields: {', '.join(SLO.model_fields)})")
        if key not in SLO.model_fields:
            raise ValueError(f"unknown field {key!r} (fields: {', '.join(SLO.model_fields)})")
        items[key] = value
    return SLO.model_validate(items)


def _read_plan(path: Path) -> Plan:
    """A plan from JSON: a plan itself, or the output of `schedctl plan --json` (its best plan)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(path, "", "file not found") from None
    except (OSError, ValueError) as exc:
        raise InputFileError(path, "", f"not a JSON plan: {exc}") from None
    if isinstance(data, dict) and "best" in data:
        data = data["best"].get("plan") if isinstance(data["best"], dict) else None
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        field, reason = validation_message(exc)
        raise InputFileError(path, field, reason) from None


def _workload(workload: str, workload_file: Path | None, rate: str, arrival: str, num_requests: int,
              seed: int) -> WorkloadConfig:
    if workload_file is not None:
        return load_workload_file(workload_file)
    return WorkloadConfig(
        workload=parse_or_usage(parse_workload, workload, "--workload"),
        rate=parse_or_usage(parse_rate, rate, "--rate"),
        arrival=parse_or_usage(parse_arrival, arrival, "--arrival"),
        num_requests=num_requests, seed=seed,
    )


def plan_cmd(
    workload: str = typer.Option("gsp", "--workload", help="workload, e.g. gsp or gsp:num_groups=32"),
    workload_file: Path | None = typer.Option(None, "--workload-file", help="workload TOML (config/workloads/)"),
    rate: str = typer.Option("60", "--rate", help="req/s, or a schedule: steps:0=2,60=8 | ramp:... | diurnal:..."),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson | gamma:cv=2 | regular"),
    num_requests: int = typer.Option(1000, "--num-requests", min=1, help="requests simulated per candidate plan"),
    seed: int = common.SEED,
    slo: str = typer.Option("ttft_s=0.5,tbt_s=0.1,attainment=0.99", "--slo",
                            help="targets: ttft_s=S,tbt_s=S[,attainment=SHARE]"),
    catalog: Path | None = typer.Option(None, "--catalog", help="GPU catalog TOML (default: config/gpus.toml)"),
    gpus: str | None = typer.Option(None, "--gpus", help="comma-separated GPU types to consider (default: all)"),
    default_max_replicas: int = typer.Option(8, "--default-max-replicas", min=1,
                                             help="limit for a GPU type without max_available"),
    model: str = common.MODEL,
    policies: str = typer.Option("fcfs,klpm:4,lpm", "--policies", help="candidate policies, comma-separated"),
    router: str = typer.Option("prefix-affinity", "--router", help="prefix-affinity | round-robin"),
    mode: str = typer.Option("constraint", "--mode", help="constraint (SLO must hold) | penalty (soft)"),
    penalty_usd_per_hour: float | None = typer.Option(
        None, "--penalty-usd-per-hour", help="λ, $/h per unit share missed (default: 100 × the dearest GPU)"),
    max_evaluations: int = typer.Option(150, "--max-evaluations", min=1, help="candidate plans to simulate at most"),
    max_time_s: float | None = typer.Option(None, "--max-time-s", help="wall-clock budget of the search"),
    search_seed: int = typer.Option(0, "--search-seed", help="seed of the annealer (same seed, same plan)"),
    from_plan: Path | None = typer.Option(None, "--from-plan", help="re-plan from this plan (JSON, e.g. a --json)"),
    chunked_prefill_tokens: int = common.CHUNK, max_running_requests: int = common.MAX_RUNNING,
    runners_up: int = typer.Option(5, "--runners-up", min=0, help="runner-up plans to show"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG of cost against SLO attainment",
                                        callback=common.output_file),
    as_json: bool = common.JSON,
) -> None:
    """Find the cheapest fleet and policy whose simulated service meets the SLO (simulated annealing)."""
    slo_model = parse_or_usage(parse_slo, slo, "--slo")
    pols = common.parse_policies(policies)
    if not pols:
        raise UsageError("--policies: give at least one policy")
    if router not in ("prefix-affinity", "round-robin"):
        raise UsageError(f"--router {router!r}: expected prefix-affinity or round-robin")
    if mode not in ("constraint", "penalty"):
        raise UsageError(f"--mode {mode!r}: expected constraint or penalty")
    if model not in known_models():
        raise UsageError(f"--model {model!r}: unknown model (known: {', '.join(known_models())})")
    wl = _workload(workload, workload_file, rate, arrival, num_requests, seed)
    model_profile = load_model(model)
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    try:
        offerings, skipped = offerings_from_catalog(model_profile, catalog, gpu_list, default_max_replicas)
    except InputFileError:
        raise
    except ValueError as exc:
        raise UsageError(f"--gpus: {exc}") from None
    if not offerings:
        raise UsageError(f"no GPU type of {catalog or config_dir() / 'gpus.toml'} can serve {model}: {skipped}")
    space = PlanSpace(offerings=tuple(offerings), policies=tuple(pols))
    objective = Objective(mode=mode, penalty_usd_per_hour=penalty_usd_per_hour
                          or Objective.default_penalty_usd_per_hour(space.max_price_usd_per_hour))
    problem = PlanningProblem(workload=wl, model=model_profile, slo=slo_model, router=router,
                              engine=common.engine_config(chunked_prefill_tokens, max_running_requests))
    config = AnnealConfig(seed=search_seed, max_evaluations=max_evaluations, max_time_s=max_time_s,
                          runners_up=runners_up)
    start = _read_plan(from_plan) if from_plan is not None else None
    evaluator = FleetEvaluator(problem, space)
    result, elapsed_s = _search(space, evaluator, objective, config, start, show=not as_json and sys.stderr.isatty())
    report = PlanReport(
        feasible=result.feasible, best=result.best, runners_up=result.runners_up, method=result.method,
        evaluations=result.evaluations, plans_in_space=space.size(), simulations=evaluator.simulations,
        stopped=result.stopped, elapsed_s=elapsed_s, skipped_gpus=skipped, slo=slo_model, objective=objective,
    )
    if plot is not None:
        cost_vs_attainment(result, slo_model.attainment, plot, f"{model_profile.name} · {wl.workload.name}")
        common.wrote(plot, "plot", as_json)
    if as_json:
        common.print_json(report)
    else:
        _print(report, model_profile.name)
    if not result.feasible and objective.mode == "constraint":
        raise typer.Exit(1)  # no plan meets the SLO (in penalty mode a plan that misses it may be the answer)


def _search(space: PlanSpace, evaluator: FleetEvaluator, objective: Objective, config: AnnealConfig,
            start: Plan | None, show: bool) -> tuple[SearchResult, float]:
    started = time.monotonic()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not show, transient=True)
    best: list[PlanScore] = []
    with progress:
        task = progress.add_task("searching", total=config.max_evaluations)

        def tick(score: PlanScore, _n: int) -> None:
            if not best or objective.rank(score) < objective.rank(best[0]):
                best[:] = [score]
            shown = best[0]
            what = "best" if shown.feasible else "closest"
            progress.update(task, advance=1, description=f"searching · {what} ${shown.cost_usd_per_hour:.2f}/h")

        if start is not None:
            result = reanneal(start, space, evaluator, objective, config, on_evaluation=tick)
        else:
            result = anneal(space, evaluator, objective, config, on_evaluation=tick)
    return result, time.monotonic() - started


def _table(title: str, scores: list[PlanScore], q: float) -> Table:
    t = Table(title=title, header_style="bold", title_justify="left")
    t.add_column("fleet")
    t.add_column("policy")
    for name in ("$/h", "attainment", f"TTFT p{q * 100:g} (s)", f"TBT p{q * 100:g} (ms)", "meets SLO"):
        t.add_column(name, justify="right")
    for s in scores:
        fleet = " + ".join(f"{n}×{gpu}" for gpu, n in s.plan.replicas.items())
        t.add_row(fleet, policy_label(s.plan.policy), f"{s.cost_usd_per_hour:.2f}", f"{s.attainment:.4f}",
                  common.fmt(s.ttft_q_s), common.fmt(s.tbt_q_s * 1e3), "yes" if s.feasible else "no")
    return t


def _print(report: PlanReport, model_name: str) -> None:
    console = Console()
    s, q = report.slo, report.slo.attainment
    head = f"{model_name} · SLO: TTFT ≤ {s.ttft_s:g} s and TBT ≤ {s.tbt_s * 1e3:g} ms for {q:.1%}"
    if report.feasible:
        console.print(_table(f"Best plan · {head}", [report.best], q))
    elif report.objective.mode == "penalty":
        console.print(_table(f"Least cost + λ × penalty (misses the SLO) · {head}", [report.best], q))
    else:
        console.print(f"[bold red]INFEASIBLE:[/] no plan visited meets the SLO; the closest plan misses it by "
                      f"{report.best.violation:.4f} (share):", highlight=False)
        console.print(_table(f"Closest plan · {head}", [report.best], q))
    if report.runners_up:
        console.print(_table("Runners-up (next best fleets)", report.runners_up, q))
    console.print(f"{report.evaluations} plans simulated of {report.plans_in_space} ({report.simulations} replica "
                  f"simulations, {report.elapsed_s:.1f} s); search stopped: {report.stopped}", highlight=False)
    for gpu, why in report.skipped_gpus.items():
        console.print(f"[yellow]left out {gpu}: {why}[/]", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
