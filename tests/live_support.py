"""Start and stop a real SGLang server on this CPU for the `live` tests (one per test module).

The server is SGLang 0.5.23's own ``sglang.launch_server`` with a tiny random-weight Llama, the schedctl plugin
loaded through its entry point, and the flags of ``schedctl sglang serve --cpu`` (``tiny_cpu_server``). It runs
in a process group of its own, which the fixture stops even when a test fails. Needs .venv-sglang
(scripts/test-sglang.sh runs these tests there).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from schedctl.engine_adapter.sglang.launcher import ServerProcess, tiny_cpu_server

START_TIMEOUT_S = 420.0  # ~40 s on an idle 2-core machine, up to ~130 s on a busy one (mostly imports)


@contextmanager
def live_server(directory: Path, sglang_args: Sequence[str] = (), environ: Mapping[str, str] | None = None,
                through_cli: bool = False) -> Iterator[ServerProcess]:
    """A started, healthy server (``through_cli``: as `schedctl sglang serve --cpu` starts it); stopped after."""
    server = tiny_cpu_server(directory, sglang_args=sglang_args, environ=environ, through_cli=through_cli)
    try:
        server.start()
        server.wait_healthy(START_TIMEOUT_S)
        yield server
    finally:
        server.stop()


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc; Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def plugin_state(url: str) -> dict[str, Any]:
    """The plugin's readback on DP rank 0 (``/server_info`` → ``internal_states[0].schedctl``)."""
    info = httpx.get(f"{url}/server_info", timeout=10.0).json()
    return dict(info["internal_states"][0]["schedctl"])


def set_internal_state(url: str, values: Mapping[str, int | float]) -> Any:
    return httpx.post(f"{url}/set_internal_state", json={"server_args": dict(values)}, timeout=10.0).json()


def wait_until(predicate: Any, timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False
