"""A real Prometheus server for the tests: Debian's ``prometheus`` (2.42), started on 127.0.0.1 on a free port
with a temporary configuration and storage directory, in a process group of its own, stopped by it.

Never the system's service: its own port, its own files. scripts/test.sh installs the package when it is missing
(as root, with apt); without it these tests fail, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

SCRAPE_INTERVAL_S = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise RuntimeError("the prometheus binary is missing: apt-get install -y --no-install-recommends prometheus "
                           "(scripts/test.sh does it)")
    return found


def config_text(jobs: Mapping[str, tuple[str, Mapping[str, str]]], interval_s: float = SCRAPE_INTERVAL_S) -> str:
    """A Prometheus configuration scraping each job's ``host:port`` target (with extra target labels)."""
    lines = ["global:", f"  scrape_interval: {interval_s:g}s", f"  scrape_timeout: {interval_s:g}s",
             "scrape_configs:"]
    for job, (target, labels) in jobs.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
        if labels:
            lines.append("        labels: {" + ", ".join(f"{k}: '{v}'" for k, v in labels.items()) + "}")
    return "\n".join(lines) + "\n"


class PrometheusProcess:
    """One prometheus process; ``start`` waits until it is ready, ``stop`` ends its process group."""

    def __init__(self, directory: Path, jobs: Mapping[str, tuple[str, Mapping[str, str]]],
                 port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.config = directory / "prometheus.yml"
        self.config.write_text(config_text(jobs))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> Sequence[str]:
        return [binary(), f"--config.file={self.config}", f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def start(self, timeout_s: float = 60.0) -> None:
        self._log = (self.directory / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready in {timeout_s:g} s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def query(self, promql: str) -> list[Any]:
        body = httpx.post(f"{self.url}/api/v1/query", data={"query": promql}, timeout=10.0).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def metric_names(self) -> set[str]:
        body = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=10.0).json()
        return set(body["data"])
