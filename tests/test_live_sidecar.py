"""The sidecar against a real SGLang 0.5.23 server on this CPU (marker `live`; scripts/test-sglang.sh runs it).

`schedctl run --config` a SGLang settings file runs as its own process beside one server for the module
(tests/live_support.py), with light traffic from schedctl.loadgen; the server is killed and started again while
the sidecar runs. Assertions are about ticks and decision lines, never wall time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_support import live_server, plugin_state, wait_until

from schedctl.controller.decision import Decision
from schedctl.controller.decision_log import read_decisions
from schedctl.engine_adapter.sglang.launcher import ServerProcess
from schedctl.loadgen.runner import LoadConfig, run_load
from schedctl.workloads.registry import make_requests

pytestmark = pytest.mark.live

TICK_S = 2.0
STALE_HOLD_TICKS = 2
SCHEDCTL = str(Path(sys.executable).with_name("schedctl"))
TRAFFIC = "gsp:num_groups=4,prompts_per_group=8,system_prompt_len=256,question_len=32,output_len=8"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with live_server(tmp_path_factory.mktemp("live-sidecar"), ["--max-running-requests", "4"]) as srv:
        yield srv


def _settings(tmp_path: Path, url: str) -> tuple[Path, Path]:
    """The shipped SGLang settings file, pointed at this server, active, ticking every TICK_S, no API."""
    text = Path("config/sidecar.sglang.toml").read_text()
    text = (text.replace('base_url = "http://127.0.0.1:30000"', f'base_url = "{url}"')
            .replace("tick_interval_s = 10 ", f"tick_interval_s = {TICK_S} ")
            .replace('mode = "advisory"', 'mode = "active"')
            .replace('path = "schedctl-decisions.jsonl"', f'path = "{tmp_path / "decisions.jsonl"}"')
            .replace("enabled = true", "enabled = false")
            .replace("stale_hold_ticks = 2 ", f"stale_hold_ticks = {STALE_HOLD_TICKS} "))
    assert f'"{url}"' in text and "enabled = false" in text and f"{TICK_S}" in text
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return path, tmp_path / "decisions.jsonl"


class Traffic:
    """Light open-loop load in a thread (bounded in requests and seconds)."""

    def __init__(self, url: str, seconds: float, rate_rps: float = 4.0) -> None:
        reqs = make_requests(TRAFFIC, rate_rps, num_requests=int(seconds * rate_rps), seed=5)
        cfg = LoadConfig(url=url, vocab_size=32000, duration_s=seconds, request_timeout_s=30.0)
        self.thread = threading.Thread(target=run_load, args=(reqs, cfg), daemon=True)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.thread.join(timeout=120.0)


def _decisions(log: Path) -> list[Decision]:
    return read_decisions(log)[0] if log.exists() else []


def test_sidecar_ticks_pushes_and_logs_one_line_per_tick(server: ServerProcess, tmp_path: Path) -> None:
    config, log = _settings(tmp_path, server.url)
    with Traffic(server.url, seconds=6 * TICK_S):
        done = subprocess.run([SCHEDCTL, "run", "--config", str(config), "--ticks", "5"], capture_output=True,
                              text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    decisions = _decisions(log)
    assert [d.tick_id for d in decisions] == [1, 2, 3, 4, 5]
    assert decisions[0].applied  # the first tick pushes the initial policy
    state = plugin_state(server.url)
    assert state["policy"] == decisions[-1].policy_label and state["schedctl_policy_version"] >= 1
    assert any(d.window.completions > 0 for d in decisions)  # the windows saw the traffic


@pytest.mark.timeout(900)
def test_restart_holds_falls_back_and_repushes_within_one_tick(server: ServerProcess, tmp_path: Path) -> None:
    config, log = _settings(tmp_path, server.url)
    sidecar = subprocess.Popen([SCHEDCTL, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: len(_decisions(log)) >= 3, 60), "the sidecar did not tick"
        assert plugin_state(server.url)["policy"] != "off"
        server.stop()  # SGLang goes away with its pushed policy
        down_from = len(_decisions(log))
        assert wait_until(lambda: len(_decisions(log)) >= down_from + STALE_HOLD_TICKS + 2, 60)
        server.start()
        server.wait_healthy(420)
        up_from = len(_decisions(log))
        assert wait_until(lambda: plugin_state(server.url)["policy"] != "off", 10 * TICK_S), \
            "the sidecar did not push its policy again after the restart"
        assert wait_until(lambda: len(_decisions(log)) >= up_from + 2, 30)
    finally:
        os.killpg(sidecar.pid, signal.SIGTERM)
        _, err = sidecar.communicate(timeout=60)
    assert sidecar.returncode == 0, err.decode()[-2000:]
    decisions = _decisions(log)
    after = decisions[down_from + 1:]  # (a tick under way while the server stopped may have seen it alive)
    i_back = next(i for i, d in enumerate(after) if not d.window.stale)
    outage, back = after[:i_back], after[i_back]
    assert len(outage) >= STALE_HOLD_TICKS + 1
    assert outage[-1].reason == "fallback"  # held STALE_HOLD_TICKS ticks, then the safe policy
    assert not any(d.applied for d in outage)  # nothing can be pushed to a server that is not there
    assert back.applied, back  # the first tick that sees the server again pushes ...
    assert back.tick_id <= decisions[up_from - 1].tick_id + 2  # ... within one tick of it answering /health
    assert plugin_state(server.url)["policy"] == decisions[-1].policy_label
