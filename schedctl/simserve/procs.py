"""Processes of a testbed on 127.0.0.1: start one in its own process group, wait until it answers, stop the group.

Used by the fleet benchmark and the tests that bring up `schedctl sim serve` replicas, SGLang's router and
sidecars: every process is started with ``start_new_session`` (its own group) and stopped with ``os.killpg``,
so nothing it spawned outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process could take it before we bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schedctl_command() -> list[str]:
    """How to run this installation's `schedctl` (the interpreter running us, so a venv needs no activation)."""
    return [sys.executable, "-m", "schedctl"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_s: float  # monotonic
    ready_s: float | None = None  # seconds from start until it answered
    url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to its process group, then SIGKILL if it has not gone within ``timeout_s``."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass


def start(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env={**os.environ, **(env or {})})
    return Proc(name=name, popen=popen, log_path=log_path, started_s=time.monotonic())


def wait_http(proc: Proc, url: str, timeout_s: float, ok: tuple[int, ...] = (200,)) -> float:
    """Poll ``url`` until it answers one of ``ok``; the seconds since the process started. RuntimeError (with the
    end of its log) if the process exits or the time runs out first."""
    deadline = proc.started_s + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
            try:
                if client.get(url).status_code in ok:
                    proc.ready_s = time.monotonic() - proc.started_s
                    return proc.ready_s
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {url} did not answer within {timeout_s:g} s:\n{proc.log_tail()}")


def start_replica(name: str, port: int, log_dir: Path, args: list[str], timeout_s: float = 60.0) -> Proc:
    """`schedctl sim serve --port PORT ARGS...`, healthy."""
    proc = start(name, [*schedctl_command(), "sim", "serve", "--port", str(port), *args], log_dir)
    proc.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, proc.url + "/health", timeout_s)
    except BaseException:
        proc.stop()
        raise
    return proc
