"""`schedctl sim serve`: the embedded engine behind SGLang's HTTP surface (a stand-in for one GPU replica)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage
from schedctl.loadgen.protocol import is_loopback
from schedctl.policies.spec import parse_policy

sim_app = typer.Typer(no_args_is_help=True, help="The embedded engine as a service.")


@sim_app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback unless --allow-remote)"),
    port: int = typer.Option(30000, "--port", min=1, max=65535),
    time_scale: float = typer.Option(1.0, "--time-scale", help="simulated seconds per wall second (10: ten times "
                                     "faster than the GPU it stands for)"),
    policy: str = typer.Option("lpm", "--policy", help="the order with the schedctl plugin off (SGLang's "
                               "--schedule-policy); pushes through /set_internal_state change it"),
    gpu: str = common.GPU, model: str = common.MODEL, step_profile: Path | None = common.STEP_PROFILE,
    kv_capacity_tokens: int | None = common.KV_TOKENS, chunked_prefill_tokens: int = common.CHUNK,
    max_running_requests: int = common.MAX_RUNNING, sglang_scheduler: bool = common.SGLANG_SCHEDULER,
    allow_remote: bool = typer.Option(False, "--allow-remote", help="allow --host other than loopback"),
    stream_interval_ms: float = typer.Option(20.0, "--stream-interval-ms", help="wall ms between the chunks of a "
                                             "stream after its first token (first tokens go out when due)"),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's: critical | error | warning | info"),
) -> None:
    """Serve the embedded engine as SGLang does (/generate, /metrics, /server_info, /set_internal_state): a
    simulated GPU replica, paced in real time (or --time-scale X times faster), for fleet tests without a GPU."""
    if not time_scale > 0:
        raise UsageError(f"--time-scale {time_scale:g}: must be > 0")
    if not allow_remote and not is_loopback(host):
        raise UsageError(f"--host {host}: not a loopback address; pass --allow-remote to listen on it")
    if not stream_interval_ms >= 0:
        raise UsageError(f"--stream-interval-ms {stream_interval_ms:g}: must be >= 0")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise UsageError(f"--log-level {log_level!r}: expected critical, error, warning, info or debug")
    spec = parse_or_usage(parse_policy, policy, "--policy")
    hw = common.hardware(gpu, model, step_profile, kv_capacity_tokens)
    cfg = common.engine_config(chunked_prefill_tokens, max_running_requests, sglang_scheduler)
    import uvicorn

    from schedctl.simserve.build import replica_app

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    app, _server = replica_app(hw, cfg, spec, time_scale, stream_interval_s=stream_interval_ms / 1000)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level in ("info", "debug"))


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
