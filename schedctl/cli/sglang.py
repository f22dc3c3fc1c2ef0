"""`schedctl sglang serve|show|push`: SGLang's own launcher with the schedctl plugin, and the plugin's policy.

``serve`` starts SGLang with the plugin enabled; ``show`` prints what the plugin runs; ``push`` sets it by hand,
for an engine no sidecar tunes (a sidecar in active mode would push its own choice back: pin it through the
sidecar's API instead).
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from schedctl.cli import common
from schedctl.cli.common import UsageError, parse_or_usage, report_error
from schedctl.engine_adapter.base import EngineError, UnsupportedPolicy
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sglang.launcher import (
    DEFAULT_REQUEST_METRICS_DIR,
    ServerStartError,
    build_command,
    serve,
)
from schedctl.engine_adapter.sglang.recorder import MAX_BYTES_ENV, TRACE_ENV
from schedctl.engine_adapter.sglang.reserve import check_conservativeness
from schedctl.engine_adapter.sglang.tiny_model import TinyLlama, write_tiny_model
from schedctl.policies.spec import parse_policy, policy_label

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
    cpu: bool = typer.Option(
        False, "--cpu", help="add what a CPU-only machine needs (device, torch-native attention, one OpenMP "
        "thread, a KV size, offline Hugging Face, shims for sgl_kernel/torchvision where missing)",
    ),
    start_timeout_s: float = typer.Option(600.0, "--start-timeout-s", min=1.0, max=3600.0,
                                          help="give up if the server does not answer /health by then"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the command and environment, start nothing"),
    record_trace: Path | None = typer.Option(None, "--record-trace", help="record the requests the server receives "
                                             "to this file as a Mooncake-format trace: block hashes, lengths, "
                                             "arrival times; never token ids or text (docs/traces.md)",
                                             callback=common.output_file),
    record_trace_max_mb: float = typer.Option(100.0, "--record-trace-max-mb", min=0.001, help="stop recording "
                                              "at this size (said once in the server's log)"),
) -> None:
    """Start `python -m sglang.launch_server ARGS` with the plugin, metrics and request export switched on.

    Everything after `--` goes to SGLang unchanged, e.g.
    `schedctl sglang serve -- --model-path meta-llama/Llama-3.1-8B-Instruct --port 30000`, or on a CPU
    `schedctl sglang serve --cpu -- --model-path DIR --load-format dummy` (DIR from `schedctl sglang tiny-model`).
    Prints the server's URL once it answers; Ctrl-C or SIGTERM stops its whole process group.
    """
    if record_trace is not None and record_trace.exists():
        raise UsageError(f"--record-trace {record_trace}: the file exists (the recorder never overwrites one)")
    max_bytes = round(record_trace_max_mb * 1e6)
    argv, env = build_command(ctx.args, request_metrics_dir=request_metrics_dir, cpu=cpu, record_trace=record_trace,
                              record_trace_max_bytes=max_bytes)
    if not dry_run and importlib.util.find_spec("sglang") is None:
        raise UsageError(f"sglang serve: SGLang is not installed beside this schedctl ({sys.executable}); on a CPU: "
                         "bash scripts/setup-sglang-cpu.sh, then .venv-sglang/bin/schedctl sglang serve --cpu ...")
    if dry_run:
        changed = {k: v for k, v in env.items() if k in ("SGLANG_PLUGINS", TRACE_ENV, MAX_BYTES_ENV)
                   or (cpu and k in _CPU_ENV_SHOWN)}
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items())), shlex.join(argv))
        return
    try:
        code = serve(ctx.args, request_metrics_dir=request_metrics_dir, cpu=cpu, start_timeout_s=start_timeout_s,
                     record_trace=record_trace, record_trace_max_bytes=max_bytes if record_trace else None)
    except ServerStartError as exc:
        report_error(f"sglang serve: {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


_CPU_ENV_SHOWN = ("SGLANG_USE_CPU_ENGINE", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")


@sglang_app.command("tiny-model")
def tiny_model_cmd(
    directory: Path = typer.Argument(..., help="where to write config.json and the tokenizer"),
    layers: int = typer.Option(2, "--layers", min=1, max=64),
    hidden: int = typer.Option(256, "--hidden", min=16, max=8192),
    intermediate: int = typer.Option(512, "--intermediate", min=16, max=32768),
    heads: int = typer.Option(4, "--heads", min=1, max=128),
    kv_heads: int = typer.Option(2, "--kv-heads", min=1, max=128),
    vocab: int = typer.Option(32000, "--vocab", min=16, max=1_000_000),
    max_context_tokens: int = typer.Option(8192, "--max-context-tokens", min=64, max=1_048_576),
) -> None:
    """Write a tiny random-weight Llama for `--load-format dummy` with a one-word-per-token offline tokenizer."""
    try:
        shape = TinyLlama(layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
                          vocab=vocab, max_context_tokens=max_context_tokens)
        shape.head_dim()
    except ValueError as exc:
        raise UsageError(f"tiny-model: {exc}") from None
    try:
        write_tiny_model(directory, shape)
    except ModuleNotFoundError as exc:
        raise UsageError(f"tiny-model: needs the `{exc.name}` package (it comes with SGLang's environment: "
                         f"bash scripts/setup-sglang-cpu.sh)") from None
    except OSError as exc:
        raise UsageError(f"tiny-model: {directory}: {exc.strerror or exc}") from None
    print(directory)


URL_OPTION = typer.Option("http://127.0.0.1:30000", "--url", help="the SGLang server's base URL")


@contextmanager
def _server(url: str) -> Iterator[SGLangAdapter]:
    """An adapter for ``url``; a refused policy is a usage error (exit 2), an unreachable server exit 1."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r}: expected the server's base URL, http://HOST:PORT")
    adapter = SGLangAdapter(url)
    try:
        yield adapter
    except UnsupportedPolicy as exc:
        raise UsageError(f"{url}: {exc}") from None
    except EngineError as exc:
        report_error(f"{url}: {exc}")
        raise typer.Exit(1) from None
    finally:
        adapter.close()


def _show(adapter: SGLangAdapter) -> None:
    caps, active = adapter.status()  # server_info only: works without --enable-metrics
    print(f"SGLang {caps.version or '?'}: schedctl policy {'off' if active is None else policy_label(active)}; "
          f"accepts {', '.join(sorted(caps.policy_kinds)) or 'nothing (is the plugin loaded?)'}")
    now = adapter.reserve()
    if now is not None:
        print(f"schedule_conservativeness {now['schedule_conservativeness']:g}: reserve share "
              f"{now['new_token_ratio']:.3f} now (from {now['new_token_ratio_init']:.3f}, floor "
              f"{now['new_token_ratio_min']:.3f})")


@sglang_app.command("show")
def show_cmd(url: str = URL_OPTION) -> None:
    """Print the policy the plugin runs and the kinds this server accepts."""
    with _server(url) as adapter:
        _show(adapter)


@sglang_app.command("push")
def push_cmd(
    policy: str = typer.Argument(..., help=(
        "fcfs, lpm, klpm:K, hrrn, spf, lpm-aging:N, sglang:fcfs|lpm|hrrn|spf, "
        "slai[:prefill_order=fcfs,strict_first=true], or off")),
    url: str = URL_OPTION,
    conservativeness: float | None = typer.Option(
        None, "--conservativeness", help="also set SGLang's schedule_conservativeness (the admission reserve, a "
        "number in (0, 10]) at run time"),
) -> None:
    """Make POLICY the plugin's order on every rank ("off": SGLang's own --schedule-policy order).

    --conservativeness sets SGLang's schedule_conservativeness in the running scheduler (0.5.23 reads it only at
    start-up; the plugin applies it through SGLang's config override and rebuilds the reserve tracker).

    Every order but fcfs and sglang:fcfs reads SGLang's prefix matches: the server must run --schedule-policy lpm.

    On SGLang, slai is its prefill order only: shortest prompt first, or FCFS, optionally the strict class first
    (requests sent with an SGLang priority above the default); its decode knobs cannot be applied and are refused.
    """
    spec = None if policy.strip().lower() == "off" else parse_or_usage(parse_policy, policy, "POLICY")
    if conservativeness is not None:
        try:
            check_conservativeness(conservativeness)
        except ValueError as exc:
            raise UsageError(f"--conservativeness: {exc}") from None
    with _server(url) as adapter:
        adapter.apply(spec)
        if conservativeness is not None:
            adapter.set_conservativeness(conservativeness)
        _show(adapter)


def register(app: typer.Typer) -> None:
    app.add_typer(sglang_app, name="sglang")
