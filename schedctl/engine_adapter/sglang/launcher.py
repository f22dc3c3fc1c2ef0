"""Start SGLang's own launcher with the schedctl plugin enabled and its metrics switched on.

``schedctl sglang serve -- <SGLang server args>`` runs ``python -m sglang.launch_server <args>`` with:

* ``SGLANG_PLUGINS`` naming ``schedctl`` (added to a whitelist already set, never replacing it);
* ``--enable-metrics`` (Prometheus ``/metrics``, read by the adapter);
* ``--export-metrics-to-file --export-metrics-to-file-dir DIR`` (the per-request stream);
* ``--schedule-policy lpm`` (the plugin's lpm/klpm order SGLang's own LPM pass; fcfs works on any base policy).

A flag the operator gave already is left as it is. :func:`build_command` is pure (the tests parse its output
with SGLang's own argument parser); :func:`serve` runs it and returns SGLang's exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PLUGIN_NAME = "schedctl"  # the entry point name in [project.entry-points."sglang.srt.plugins"]
DEFAULT_REQUEST_METRICS_DIR = "sglang-request-metrics"


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def build_command(
    sglang_args: Sequence[str],
    *,
    request_metrics_dir: str | os.PathLike[str] = DEFAULT_REQUEST_METRICS_DIR,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start SGLang with the plugin, metrics and request export on."""
    args = list(sglang_args)
    if args and args[0] == "--":
        args = args[1:]
    extra: list[str] = []
    if not _has_flag(args, "--enable-metrics"):
        extra.append("--enable-metrics")
    if not _has_flag(args, "--export-metrics-to-file"):
        extra.append("--export-metrics-to-file")
    if not _has_flag(args, "--export-metrics-to-file-dir"):
        extra += ["--export-metrics-to-file-dir", str(Path(request_metrics_dir).absolute())]
    if not _has_flag(args, "--schedule-policy"):
        extra += ["--schedule-policy", "lpm"]
    env = dict(os.environ if environ is None else environ)
    plugins = [p.strip() for p in env.get("SGLANG_PLUGINS", "").split(",") if p.strip()]
    if plugins and PLUGIN_NAME not in plugins:
        plugins.append(PLUGIN_NAME)
    env["SGLANG_PLUGINS"] = ",".join(plugins or [PLUGIN_NAME])
    return [python, "-m", "sglang.launch_server", *args, *extra], env


def request_metrics_dir_of(argv: Sequence[str]) -> str | None:
    """The ``--export-metrics-to-file-dir`` in a command line (what the sidecar should follow)."""
    for i, a in enumerate(argv):
        if a.startswith("--export-metrics-to-file-dir="):
            return a.split("=", 1)[1]
        if a == "--export-metrics-to-file-dir" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def serve(
    sglang_args: Sequence[str], *, request_metrics_dir: str | os.PathLike[str] = DEFAULT_REQUEST_METRICS_DIR
) -> int:
    """Run SGLang's launcher in the foreground (Ctrl-C stops it) and return its exit status."""
    argv, env = build_command(sglang_args, request_metrics_dir=request_metrics_dir)
    Path(request_metrics_dir_of(argv) or request_metrics_dir).mkdir(parents=True, exist_ok=True)
    print("schedctl: starting", " ".join(argv), f"(SGLANG_PLUGINS={env['SGLANG_PLUGINS']})", file=sys.stderr)
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        return 130
