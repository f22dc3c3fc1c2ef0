"""`schedctl capacity`: the highest request rate at which each policy meets a TTFT and TBT SLO."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from schedctl.bench.capacity import CapacitySLO, capacity_search, plot_capacity
from schedctl.bench.sweep import default_jobs
from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage
from schedctl.files import validation_message
from schedctl.policies.spec import PolicySpec, parse_policy, split_policies
from schedctl.workloads.registry import parse_arrival, parse_workload
from schedctl.workloads.sharegpt import SHAREGPT4_CLI


def _policies(text: str) -> list[PolicySpec]:
    pols = [parse_or_usage(parse_policy, p, "--policies") for p in split_policies(text)]
    if not pols:
        raise UsageError("--policies: give at least one policy")
    return pols


def _slo(**fields: float) -> CapacitySLO:
    try:
        return CapacitySLO(**fields)
    except ValidationError as exc:
        field, reason = validation_message(exc)
        raise UsageError(f"--{field.replace('_', '-')}: {reason}") from None


def capacity_cmd(
    policies: str = typer.Option(
        "sarathi,slai", "--policies", help="comma-separated policies, knobs allowed: sarathi,slai:theta_low=3,lpm"
    ),
    workload: str = typer.Option(SHAREGPT4_CLI + ",strict_fraction=0.2", "--workload",
                                 help="workload and parameters (default: ShareGPT4-like lengths, 20% strict TBT)"),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson | gamma:cv=2 | regular"),
    num_requests: int = typer.Option(3000, "--num-requests", help="requests per run"),
    seeds: int = typer.Option(3, "--seeds", help="runs per rate (seeds 0..N-1); the SLO is checked on their mean"),
    ttft_quantile: float = typer.Option(0.5, "--ttft-quantile", help="TTFT quantile held under the threshold"),
    ttft_threshold_s: float = typer.Option(0.5, "--ttft-threshold-s", help="TTFT threshold (s)"),
    tbt_quantile: float = typer.Option(0.99, "--tbt-quantile", help="TBT quantile held under each class's SLO"),
    tbt_strict_s: float = typer.Option(0.1, "--tbt-strict-s", help="TBT SLO of slo_class 'strict' (s)"),
    tbt_relaxed_s: float = typer.Option(0.5, "--tbt-relaxed-s", help="TBT SLO of slo_class 'relaxed' (s)"),
    tbt_default_s: float = typer.Option(0.2, "--tbt-default-s", help="TBT SLO of other classes (s)"),
    max_backlog_growth: float = typer.Option(
        0.05, "--max-backlog-growth", help="keep-up check: growth of requests in the system / arrivals (2nd half)"
    ),
    tolerance: float = typer.Option(0.02, "--tolerance", help="stop when the rate bracket is within this fraction"),
    gpu: str = typer.Option("rtx-6000-ada", "--gpu", help="GPU profile (config/gpus.toml)"),
    model: str = typer.Option("mistral-7b", "--model", help="model shape (config/models.toml)"),
    step_profile: Path | None = common.STEP_PROFILE, kv_capacity_tokens: int | None = common.KV_TOKENS,
    chunked_prefill_tokens: int = common.CHUNK, max_running_requests: int = common.MAX_RUNNING,
    new_token_ratio: float = typer.Option(
        0.4, "--new-token-ratio", help="KV reserved for this share of future outputs at admission (0: vLLM-like)"
    ),
    jobs: int = typer.Option(default_jobs(), "--jobs", min=1, help="parallel runs"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG of latency against rate per policy",
                                        callback=common.output_file),
    as_json: bool = common.JSON,
) -> None:
    """Find each policy's capacity: the highest rate whose TTFT quantile and per-class P99 TBT meet the SLO.

    Token-budget policies (sarathi, slai, rad) take their budget and running cap from their own knobs; the
    --chunked-prefill-tokens and --max-running-requests options apply to fcfs/lpm/klpm.
    """
    pols = _policies(policies)
    spec = parse_or_usage(parse_workload, workload, "--workload")
    parse_or_usage(parse_arrival, arrival, "--arrival")
    if seeds < 1:
        raise UsageError("--seeds must be >= 1")
    if num_requests < 10:
        raise UsageError("--num-requests must be >= 10")
    if not 0 < tolerance < 1:
        raise UsageError("--tolerance must be between 0 and 1")
    slo = _slo(ttft_quantile=ttft_quantile, ttft_threshold_s=ttft_threshold_s, tbt_quantile=tbt_quantile,
               tbt_strict_s=tbt_strict_s, tbt_relaxed_s=tbt_relaxed_s, tbt_default_s=tbt_default_s,
               max_backlog_growth=max_backlog_growth)
    hw = common.hardware(gpu, model, step_profile, kv_capacity_tokens)
    if not 0 <= new_token_ratio <= 1:
        raise UsageError("--new-token-ratio must be between 0 and 1")
    cfg = common.engine_config(chunked_prefill_tokens, max_running_requests)
    # no reserve at all (vLLM-like) also after a retraction; otherwise the engine's post-retraction share
    retract = 0.0 if new_token_ratio == 0 else max(new_token_ratio, cfg.retract_token_ratio)
    cfg = cfg.model_copy(update={"new_token_ratio": new_token_ratio, "retract_token_ratio": retract})
    err = Console(stderr=True)
    show = not as_json and sys.stderr.isatty()
    def progress(line: str) -> None:
        err.print(f"  {line}", highlight=False)

    results = capacity_search(pols, spec, hw, cfg, slo, list(range(seeds)), num_requests, arrival, tolerance,
                              jobs=jobs, on_step=progress if show else None)
    title = f"{spec.name} · {hw.model.name} on {hw.gpu.name}"
    if plot is not None:
        plot_capacity(results, slo, plot, title)
        common.wrote(plot, "plot", as_json)
    if as_json:
        common.print_json(results)
        return
    classes = sorted({c for r in results if r.at_capacity for c in r.at_capacity.tbt_q_s})
    Console().print(common.table(
        f"Capacity · {title} · TTFT q{slo.ttft_quantile:g} <= {slo.ttft_threshold_s:g} s, TBT q{slo.tbt_quantile:g} "
        f"<= class SLO · {num_requests} requests × {seeds} seed(s)",
        ["policy", "capacity (req/s)", "saturation (req/s)", f"TTFT q{slo.ttft_quantile:g} (s)",
         *[f"TBT q{slo.tbt_quantile:g} {c} (ms)" for c in classes], "rates tried"],
        [[r.policy, r.capacity_rps if r.capacity_rps is not None else "none", r.saturation_rps,
          r.at_capacity.ttft_q_s if r.at_capacity else float("nan"),
          *[r.at_capacity.tbt_q_s.get(c, float("nan")) * 1e3 if r.at_capacity else float("nan") for c in classes],
          len(r.points)] for r in results],
    ))


def register(app: typer.Typer) -> None:
    app.command("capacity")(capacity_cmd)
