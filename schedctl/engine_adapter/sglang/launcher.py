"""Start SGLang's own launcher with the schedctl plugin enabled and its metrics switched on.

``schedctl sglang serve -- <SGLang server args>`` runs ``python -m sglang.launch_server <args>`` with:

* ``SGLANG_PLUGINS`` naming ``schedctl`` (added to a whitelist already set, never replacing it);
* ``--enable-metrics`` (Prometheus ``/metrics``, read by the adapter);
* ``--export-metrics-to-file --export-metrics-to-file-dir DIR`` (the per-request stream);
* ``--schedule-policy lpm`` (the plugin's lpm/klpm order SGLang's own LPM pass; fcfs works on any base policy).

With ``cpu=True`` (``serve --cpu``) it adds what a CPU-only machine needs (measured on SGLang 0.5.23, torch 2.13.0
CPU, 2 cores; ``docs/sglang-cpu.md``): ``--device cpu --attention-backend torch_native --disable-cuda-graph
--disable-overlap-schedule --dtype float32 --tp 1`` and an explicit KV size; ``SGLANG_USE_CPU_ENGINE=1`` (else
SGLang's ``is_cpu()`` is false and CUDA paths are taken); ``OMP_NUM_THREADS=1`` (with two threads every forward
pass took 0.4-0.5 s whatever the batch, with one 5-6x less); offline Hugging Face; and on ``PYTHONPATH`` the shim
of each module SGLang imports on the CPU that is not installed for real (``cpu_shims/``).

A flag or variable the operator gave already is left as it is. :func:`build_command` is pure (the tests parse
its output with SGLang's own argument parser). :class:`ServerProcess` runs it in a process group of its own,
waits until the server answers, and stops the whole group (SGLang runs three processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from schedctl.engine_adapter.sglang.cpu_shims import pythonpath_for_missing
from schedctl.engine_adapter.sglang.recorder import MAX_BYTES_ENV, TRACE_ENV

PLUGIN_NAME = "schedctl"  # the entry point name in [project.entry-points."sglang.srt.plugins"]
DEFAULT_REQUEST_METRICS_DIR = "sglang-request-metrics"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
CPU_KV_TOKENS = 65536  # --max-total-tokens on the CPU: SGLang would size the pool from host memory otherwise
CPU_FLAGS: tuple[tuple[str, str | None], ...] = (
    ("--device", "cpu"), ("--attention-backend", "torch_native"), ("--disable-cuda-graph", None),
    ("--disable-overlap-schedule", None), ("--dtype", "float32"), ("--tp", "1"),
)
CPU_ENV = {"SGLANG_USE_CPU_ENGINE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with the tail of its log."""


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag V`` or ``--flag=V``), or None."""
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def build_command(
    sglang_args: Sequence[str],
    *,
    request_metrics_dir: str | os.PathLike[str] = DEFAULT_REQUEST_METRICS_DIR,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
    cpu: bool = False,
    record_trace: str | os.PathLike[str] | None = None,
    record_trace_max_bytes: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start SGLang with the plugin, metrics and request export on (and, with
    ``record_trace``, the plugin recording a Mooncake-format trace of the requests: ``recorder.py``)."""
    args = list(sglang_args)
    if args and args[0] == "--":
        args = args[1:]
    wanted: list[tuple[str, str | None]] = [
        ("--enable-metrics", None), ("--export-metrics-to-file", None),
        ("--export-metrics-to-file-dir", str(Path(request_metrics_dir).absolute())), ("--schedule-policy", "lpm"),
        ("--host", DEFAULT_HOST),
    ]
    if cpu:
        wanted += [*CPU_FLAGS, ("--max-total-tokens", str(CPU_KV_TOKENS))]
    extra: list[str] = []
    for flag, value in wanted:
        if not _has_flag(args, flag):
            extra += [flag] if value is None else [flag, value]
    env = dict(os.environ if environ is None else environ)
    plugins = [p.strip() for p in env.get("SGLANG_PLUGINS", "").split(",") if p.strip()]
    if plugins and PLUGIN_NAME not in plugins:
        plugins.append(PLUGIN_NAME)
    env["SGLANG_PLUGINS"] = ",".join(plugins or [PLUGIN_NAME])
    if record_trace is not None:
        env[TRACE_ENV] = str(Path(record_trace).absolute())
        if record_trace_max_bytes is not None:
            env[MAX_BYTES_ENV] = str(record_trace_max_bytes)
    if cpu:
        for key, value in CPU_ENV.items():
            env.setdefault(key, value)
        shims = pythonpath_for_missing()
        if shims:
            env["PYTHONPATH"] = os.pathsep.join([*shims, *filter(None, [env.get("PYTHONPATH")])])
    return [python, "-m", "sglang.launch_server", *args, *extra], env


def request_metrics_dir_of(argv: Sequence[str]) -> str | None:
    """The ``--export-metrics-to-file-dir`` in a command line (what the sidecar should follow)."""
    return flag_value(argv, "--export-metrics-to-file-dir")


def base_url_of(argv: Sequence[str]) -> str:
    """The URL a server started with ``argv`` answers on."""
    host = flag_value(argv, "--host") or DEFAULT_HOST
    return f"http://{host}:{flag_value(argv, '--port') or DEFAULT_PORT}"


class ServerProcess:
    """An SGLang server in a process group of its own: start, wait until healthy, stop the whole group.

    Its output goes to ``log_path`` (or this process's stderr). ``stop`` sends SIGTERM to the group, then SIGKILL
    after ``stop_grace_s``; it is safe to call twice. Usable as a context manager.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None = None,
                 die_with_parent: bool = False) -> None:
        self.argv, self.env, self.log_path = list(argv), dict(env), log_path
        self.die_with_parent = die_with_parent  # Linux: SIGKILL the server if this process dies, however it dies
        self.url = base_url_of(self.argv)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        metrics_dir = request_metrics_dir_of(self.argv)
        if metrics_dir is not None:  # SGLang writes there but does not create it
            Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_kill_with_parent if self.die_with_parent else None)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float = 300.0, poll_s: float = 0.5) -> None:
        """Block until ``/health`` answers 200; ServerStartError if the server exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerStartError(f"SGLang exited with status {self.proc.returncode}{self._log_tail()}")
            if self.healthy():
                return
            time.sleep(poll_s)
        raise ServerStartError(f"SGLang did not answer {self.url}/health within {timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail)

    def stop(self, stop_grace_s: float = 15.0) -> int | None:
        """Stop the server's whole process group; returns its exit status (None if it was never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=stop_grace_s)
        _signal_group(proc.pid, signal.SIGKILL)  # what is left of the group (SGLang's scheduler, detokenizer)
        proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _kill_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when its parent dies (PR_SET_PDEATHSIG). SGLang's
    own processes do the same towards the launcher, so nothing of the server outlives ``schedctl sglang serve``
    even when serve is killed with SIGKILL."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def serve(
    sglang_args: Sequence[str], *, request_metrics_dir: str | os.PathLike[str] = DEFAULT_REQUEST_METRICS_DIR,
    cpu: bool = False, start_timeout_s: float = 600.0, record_trace: str | os.PathLike[str] | None = None,
    record_trace_max_bytes: int | None = None,
) -> int:
    """Run SGLang in the foreground: print its URL once healthy; Ctrl-C or SIGTERM stops its process group."""
    argv, env = build_command(sglang_args, request_metrics_dir=request_metrics_dir, cpu=cpu,
                              record_trace=record_trace, record_trace_max_bytes=record_trace_max_bytes)
    print("schedctl: starting", " ".join(argv), f"(SGLANG_PLUGINS={env['SGLANG_PLUGINS']})", file=sys.stderr)
    server = ServerProcess(argv, env, die_with_parent=sys.platform == "linux").start()

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.wait_healthy(start_timeout_s)
        print(f"schedctl: SGLang is serving at {server.url}", file=sys.stderr, flush=True)
        assert server.proc is not None
        return server.proc.wait()
    except KeyboardInterrupt:
        print("schedctl: stopping SGLang's process group", file=sys.stderr)
        return 130
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tiny_cpu_server(
    directory: Path, *, port: int | None = None, sglang_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None, python: str = sys.executable, through_cli: bool = False,
) -> ServerProcess:
    """A real SGLang server on this CPU with a tiny random-weight Llama (not started yet; ``start()`` it).

    ``directory`` receives the model (``tiny-model``), the request export and ``server.log``. Used by the live
    tests and ``benchmarks/live_sglang.py``; ``sglang_args`` adds or overrides SGLang flags. ``through_cli`` runs
    the operator's command, ``schedctl sglang serve --cpu -- ...``, instead of SGLang's launcher directly (the
    same flags and environment: :func:`build_command` makes both).
    """
    from schedctl.engine_adapter.sglang.tiny_model import write_tiny_model

    model = write_tiny_model(directory / "tiny-llama")
    metrics_dir = directory / "request-metrics"
    args = ["--model-path", str(model), "--load-format", "dummy", "--port", str(port or free_port()), *sglang_args]
    argv, env = build_command(args, request_metrics_dir=metrics_dir, python=python, environ=environ, cpu=True)
    if through_cli:
        env = dict(os.environ if environ is None else environ)
        argv = [str(Path(python).with_name("schedctl")), "sglang", "serve", "--cpu", "--request-metrics-dir",
                str(metrics_dir), "--", *args]
    return ServerProcess(argv, env, log_path=directory / "server.log")
