"""`schedctl whatif --trace FILE`: a trace replayed under every static policy of the arm set and under the adaptive
controller, on the embedded engine with a calibrated step-time profile (bench/trace_whatif.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schedctl.bench import plots
from schedctl.bench.adaptive import ADAPTIVE, RunJob, default_workers, run_jobs, static_policies
from schedctl.bench.trace_whatif import recommend, rows_of, trace_scenario, write_settings
from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage
from schedctl.controller.ktuner import KTunerParams
from schedctl.files import read_toml, validation_message
from schedctl.policies.arms import arm_of
from schedctl.policies.spec import KLPMSpec, check_k, parse_policy, policy_label, split_policies
from schedctl.settings import Settings, load_settings
from schedctl.sim.profiles import config_dir

DEFAULT_PROFILE = Path("h100-sxm-llama-3.1-8b") / "profile.toml"  # under config/profiles/


def _arm(text: str) -> Any:
    """An arm as the tuner's settings take it: a k (an integer or inf) for a k-LPM policy, else the policy's label."""
    try:
        return check_k(text)
    except ValueError:
        pass
    spec = parse_or_usage(parse_policy, text, "--arms")
    if isinstance(spec, KLPMSpec):
        return arm_of(spec)  # a k on the k axis; hrrn, spf, lpm-aging:N, sglang:* by their label
    return policy_label(spec)


def parse_arms(text: str, tuner: KTunerParams) -> tuple[KTunerParams, list[Any]]:
    arms = [_arm(a) for a in split_policies(text)]
    try:
        return KTunerParams.model_validate({**tuner.model_dump(), "arms": arms}), arms
    except ValidationError as exc:
        _field, reason = validation_message(exc)
        raise UsageError(f"--arms {text!r}: {reason}") from None


def whatif_cmd(
    trace: Path = typer.Option(..., "--trace", help="the trace to replay (schedctl JSONL, Mooncake, Azure CSV; "
                               "docs/traces.md)"),
    time_scale: float = typer.Option(1.0, "--time-scale", help="multiply every arrival time (0.5: twice the load)"),
    config: Path | None = typer.Option(None, "--config", help="sidecar settings: the arm set, SLO, controller "
                                       "(default: config/sidecar.sim.toml)"),
    arms: str | None = typer.Option(None, "--arms", help="the static policies to compare, in the tuner's order "
                                    "(e.g. fcfs,klpm:4,lpm); default: the settings' arms"),
    profile: Path | None = typer.Option(None, "--profile", help="step-time profile TOML (default: "
                                        f"config/profiles/{DEFAULT_PROFILE})"),
    gpu: str | None = typer.Option(None, "--gpu", help="GPU (default: the settings' engine.sim.gpu)"),
    model: str | None = typer.Option(None, "--model", help="model (default: the settings' engine.sim.model)"),
    current: str = typer.Option("fcfs", "--current", help="the policy the engine runs now (the gain is against it)"),
    jobs: int = typer.Option(default_workers(), "--jobs", min=1, help="parallel runs"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG: P99 TTFT and attainment per policy",
                                        callback=common.output_file),
    settings_out: Path | None = typer.Option(None, "--settings-out", help="write the recommended settings (TOML)",
                                             callback=common.output_file),
    as_json: bool = common.JSON,
) -> None:
    """Replay a trace under every static policy of the arm set and the adaptive controller; recommend one."""
    default = config_dir() / "sidecar.sim.toml"
    path: Path | None = config if config is not None else (default if default.exists() else None)
    settings = load_settings(path) if path is not None else Settings()
    sim = settings.engine.sim
    prof = profile if profile is not None else config_dir() / "profiles" / DEFAULT_PROFILE
    hw = common.hardware(gpu or sim.gpu, model or sim.model, prof, None)
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise UsageError(f"--time-scale {time_scale:g}: must be a number > 0")
    params = settings.controller_params()
    arm_list = None
    if arms is not None:
        tuner, arm_list = parse_arms(arms, params.tuner)
        params = params.model_copy(update={"tuner": tuner})
    statics = static_policies(params)
    cur = policy_label(parse_or_usage(parse_policy, current, "--current"))
    scenario = trace_scenario(trace, time_scale)
    cfg = common.engine_config(sim.chunked_prefill_tokens, sim.max_running_requests)
    policies = [ADAPTIVE, *statics, *([cur] if cur not in statics else [])]
    run = [RunJob(scenario=scenario, seed=0, policy=p, controller=params, hardware=hw, engine=cfg,
                  tick_interval_s=settings.service.tick_interval_s) for p in policies]
    show = not as_json and sys.stderr.isatty()
    with Progress(TextColumn("whatif"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not show, transient=True) as progress:
        task = progress.add_task("runs", total=len(run))
        rows = rows_of(run_jobs(run, jobs, on_done=lambda: progress.advance(task)))
    rec = recommend(rows, statics, cur)
    source = f"{trace}" + (f" at time scale {time_scale:g}" if time_scale != 1.0 else "")
    if plot is not None:
        plots.policy_bars(rows, plot, f"{trace.name} ×{time_scale:g} · {hw.model.name} on {hw.gpu.name}",
                          settings.slo.ttft_p99_target_ms / 1000.0)
        common.wrote(plot, "plot", as_json)
    if settings_out is not None:
        base = read_toml(path) if path is not None else {}
        write_settings(settings_out, base, rec, arm_list, source)
        load_settings(settings_out)  # what was written loads (a bug here must not hand the operator a bad file)
        common.wrote(settings_out, "recommended settings", as_json)
    if as_json:
        sys.stdout.write('{"rows": [' + ",".join(r.model_dump_json() for r in rows) + '], "recommendation": '
                         + rec.model_dump_json() + "}\n")
        return
    slo_s = settings.slo.ttft_p99_target_ms / 1000.0
    console = Console(width=max(120, Console().width))
    console.print(common.table(
        f"{source} · {rows[0].requests} requests · {hw.model.name} on {hw.gpu.name} ({prof.name} of "
        f"{prof.parent.name}) · SLO: TTFT ≤ {slo_s:g} s",
        ["policy", "TTFT p50 (s)", "p99 (s)", "attainment", "cache hit", "policy changes"],
        [[r.policy + (" (current)" if r.policy == cur else ""), r.ttft_p50_s, r.ttft_p99_s, r.attainment,
          r.cache_hit_rate, r.changes if r.policy == ADAPTIVE else "-"] for r in rows],
    ))
    console.print(f"recommended: {rec.policy} — {rec.reason}")
    console.print(f"expected gain over {rec.current}: P99 TTFT ÷ {rec.p99_gain:.3g}, SLO attainment "
                  f"{rec.attainment_gain:+.1%} (points)")


def register(app: typer.Typer) -> None:
    app.command("whatif")(whatif_cmd)
