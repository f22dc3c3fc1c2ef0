"""The decision log: one complete JSON line per tick, fsynced, rotated by size, torn last lines handled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schedctl.controller.core import Controller
from schedctl.controller.decision import Decision
from schedctl.controller.decision_log import DecisionLog, log_files, read_decisions
from schedctl.engine_adapter.base import Observation
from schedctl.files import InputFileError
from schedctl.stats import LatencyDist


def decisions(n: int) -> list[Decision]:
    c = Controller(run_id="t")
    out = []
    for i in range(n):
        o = Observation(start_s=10.0 * i, end_s=10.0 * (i + 1), arrivals=40, completions=40, queue_len=3,
                        ttft=LatencyDist(samples_s=[0.2 + 0.01 * j for j in range(40)]))
        d = c.step(o)
        out.append(c.record_apply(d, True) if d.push else d)
    return out


def test_one_complete_json_line_per_decision_with_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path)
    ds = decisions(12)
    for d in ds:
        log.write(d)
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 12 and path.read_bytes().endswith(b"\n")
    for i, line in enumerate(lines, start=1):
        obj = json.loads(line)
        assert obj["event"] == "decision" and obj["tick_id"] == i and obj["decision_id"] == f"t:{i}"
        assert "timestamp" in obj
    back, torn = read_decisions(path)
    assert torn == 0 and back == ds


def test_rotation_by_size_keeps_complete_lines_and_readers_see_all_of_them(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, max_bytes=4000, backup_count=50)
    ds = decisions(30)
    for d in ds:
        log.write(d)
    log.close()
    files = log_files(path)
    assert len(files) > 3 and files[-1] == path
    for f in files:  # complete lines only (the current file is empty when the last write rotated it)
        data = f.read_bytes()
        assert data.endswith(b"\n") or (f == path and data == b"")
    back, torn = read_decisions(path)
    assert [d.tick_id for d in back] == list(range(1, 31)) and torn == 0


def test_rotation_drops_the_oldest_past_backup_count(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, max_bytes=1, backup_count=2)  # every line rotates
    for d in decisions(6):
        log.write(d)
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    assert [d.tick_id for d in read_decisions(path)[0]] == [5, 6]


def test_a_torn_last_line_is_skipped_by_readers_and_cut_off_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path)
    ds = decisions(5)
    for d in ds[:4]:
        log.write(d)
    log.close()
    full = json.dumps({"event": "decision", **json.loads(ds[4].model_dump_json())})
    with path.open("a") as fh:
        fh.write(full[: len(full) // 2])  # killed mid-line
    back, torn = read_decisions(path)
    assert len(back) == 4 and torn == 1
    log = DecisionLog(path)
    assert log.repaired_bytes == len(full) // 2
    log.write(ds[4])
    log.close()
    back, torn = read_decisions(path)
    assert [d.tick_id for d in back] == [1, 2, 3, 4, 5] and torn == 0


def test_a_bad_line_in_the_middle_is_an_error_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path)
    for d in decisions(3):
        log.write(d)
    log.close()
    lines = path.read_text().splitlines()
    lines[1] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match="line 2"):
        read_decisions(path)


CONFIG = """
[tuner]
initial_policy = "klpm:4"
[engine]
adapter = "sim"
[engine.sim]
scenario = "tiny"
scenarios_file = "{scenarios}"
demo_seconds = 30
[service]
tick_interval_s = 1
[log]
path = "{log}"
[api]
enabled = false
"""

SCENARIOS = """
[scenarios.tiny]
phases = [{ duration_s = 300, streams = [{ workload = "gsp:num_groups=8,system_prompt_len=256", rate = "20" }] }]
"""


@pytest.mark.timeout(60)
def test_sigkill_mid_run_leaves_exactly_one_well_formed_line_per_logged_tick(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    scenarios = tmp_path / "scenarios.toml"
    scenarios.write_text(SCENARIOS)
    config = tmp_path / "sidecar.toml"
    config.write_text(CONFIG.format(scenarios=scenarios, log=log))
    code = "from schedctl.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "--config", str(config), "--no-compare"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reported = 0
    assert proc.stdout is not None
    deadline = time.monotonic() + 40
    while reported < 15 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("tick "):
            reported = int(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert reported >= 15, proc.stderr.read() if proc.stderr else ""
    back, torn = read_decisions(log)
    ticks = [d.tick_id for d in back]
    # ticks are printed after their line is fsynced; the kill may land after the next line but before its print
    assert ticks == list(range(1, len(ticks) + 1))
    assert reported <= len(ticks) <= reported + 1
    assert torn <= 1
    for raw in log.read_bytes().split(b"\n")[:-1]:
        json.loads(raw)  # every complete line parses


FULL_DISK_SCRIPT = """
import json, resource, signal, sys
from schedctl.controller.service import Service
from schedctl.controller.core import Controller
from schedctl.controller.decision_log import DecisionLog
from schedctl.engine_adapter.base import Observation
from schedctl.stats import LatencyDist

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG instead of killing us
path, limit = sys.argv[1], int(sys.argv[2])
t = [0.0]

class Engine:
    def capabilities(self): raise NotImplementedError
    def apply(self, spec): pass
    def observe(self):
        t[0] += 10.0
        return Observation(start_s=t[0] - 10, end_s=t[0], arrivals=40, completions=40, queue_len=3,
                           ttft=LatencyDist(samples_s=[0.2 + 0.01 * j for j in range(40)]))

svc = Service(Controller(run_id="fs"), Engine(), DecisionLog(path, fsync=True), clock=lambda: t[0])
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # the disk is full at `limit` bytes
full = [svc.tick().tick_id for _ in range(8)]
errors_while_full = svc.log_errors
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space returns
after = [svc.tick().tick_id for _ in range(3)]
print(json.dumps({"errors": errors_while_full, "cut_bytes": svc.log.cut_bytes, "after": after,
                  "healthy": svc.status()["log_healthy"], "status_errors": svc.status()["log_write_errors"]}))
"""


def test_a_full_disk_leaves_whole_lines_counts_the_errors_and_logging_resumes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(tmp_path / "probe.jsonl", fsync=False)
    log.write(decisions(1)[0])
    log.close()
    one_line = (tmp_path / "probe.jsonl").stat().st_size
    limit = int(2.5 * one_line)  # room for two whole lines and half of a third
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(path), str(limit)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["errors"] >= 6 and report["cut_bytes"] > 0  # a third line was started, failed, and was cut
    assert "Traceback" not in out.stderr and "decision log write failed" in out.stderr
    assert report["healthy"] and report["status_errors"] == report["errors"]  # healthy again once lines go in
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and all(json.loads(line) for line in raw.splitlines())
    back, torn = read_decisions(path)
    assert torn == 0 and [d.tick_id for d in back] == [1, 2, *report["after"]]  # no torn line mid-file
    cli = subprocess.run([sys.executable, "-c", "from schedctl.cli import main; main()", "decisions", str(path),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert [d["tick_id"] for d in json.loads(cli.stdout)] == [1, 2, *report["after"]]
