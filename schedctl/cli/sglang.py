"""`schedctl sglang serve -- <SGLang server args>`: SGLang's own launcher with the schedctl plugin enabled."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from schedctl.engine_adapter.sglang.launcher import DEFAULT_REQUEST_METRICS_DIR, build_command, serve

sglang_app = typer.Typer(no_args_is_help=True, help="Run SGLang with the schedctl plugin (see docs/sglang.md).")


@sglang_app.command(
    "serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def serve_cmd(
    ctx: typer.Context,
    request_metrics_dir: Path = typer.Option(
        Path(DEFAULT_REQUEST_METRICS_DIR), "--request-metrics-dir",
        help="where SGLang writes its per-request metrics (the sidecar follows them)",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command and environment, start nothing"),
) -> None:
    """Start `python -m sglang.launch_server ARGS` with the plugin, metrics and request export switched on.

    Everything after `--` goes to SGLang unchanged, e.g.
    `schedctl sglang serve -- --model-path meta-llama/Llama-3.1-8B-Instruct --port 30000`.
    """
    argv, env = build_command(ctx.args, request_metrics_dir=request_metrics_dir)
    if dry_run:
        print(f"SGLANG_PLUGINS={shlex.quote(env['SGLANG_PLUGINS'])} {shlex.join(argv)}")
        return
    raise typer.Exit(serve(ctx.args, request_metrics_dir=request_metrics_dir))


def register(app: typer.Typer) -> None:
    app.add_typer(sglang_app, name="sglang")
