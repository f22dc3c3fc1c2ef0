"""The `schedctl` command end to end (a real subprocess): JSON output, and bad input → one clear line, exit 2,
nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schedctl.files import AtomicWriter


def schedctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "schedctl", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_simulate_json_prints_one_object_with_the_figures():
    proc = schedctl("simulate", "--num-requests", "300", "--rate", "10", "--policy", "klpm:2", "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    for key in ("policy", "requests", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tbt_p99_s", "throughput_rps",
                "cache_hit_rate"):
        assert key in obj
    assert obj["policy"] == "klpm:2" and obj["requests"] == 300


def test_sweep_json_prints_a_row_per_rate_and_policy(tmp_path: Path):
    plot = tmp_path / "sweep.png"
    proc = schedctl("sweep", "--rates", "5,15", "--policies", "fcfs,lpm", "--num-requests", "200", "--json",
                    "--jobs", "1", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["rate"], r["policy"]) for r in rows] == [(5.0, "fcfs"), (5.0, "lpm"), (15.0, "fcfs"), (15.0, "lpm")]
    for r in rows:
        assert {"requests", "ttft_p50_s", "ttft_p99_s", "tbt_p99_s", "throughput_rps", "cache_hit_rate"} <= set(r)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_simulate_writes_requests_and_a_plot(tmp_path: Path):
    out, plot = tmp_path / "reqs.jsonl", tmp_path / "run.png"
    proc = schedctl("simulate", "--num-requests", "50", "--requests-out", str(out), "--plot", str(plot), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["request_id"] for r in rows) == list(range(50))
    assert all(r["ttft_s"] > 0 for r in rows)
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "must_say"), [
    (["--workload", "gsp:num_groups=abc"], ["num_groups", "integer"]),
    (["--workload", "nosuch"], ["nosuch"]),
    (["--policy", "klpm:0"], ["--policy", ">= 1"]),
    (["--gpu", "h900"], ["h900", "h100-sxm"]),
    (["--rate", "steps:0=1,5"], ["--rate"]),
])
def test_bad_command_line_values_give_one_clear_line(args: list[str], must_say: list[str]):
    line = one_error_line(schedctl("simulate", "--num-requests", "10", *args))
    for word in must_say:
        assert word in line


def test_malformed_workload_file_names_the_file_and_the_line(tmp_path: Path):
    bad = tmp_path / "w.toml"
    bad.write_text('num_requests = 10\nrate = 5\n[workload\nname = "gsp"\n')
    line = one_error_line(schedctl("simulate", "--workload-file", str(bad)))
    assert str(bad) in line and "line 3" in line


def test_workload_file_with_a_bad_field_names_the_file_and_the_field(tmp_path: Path):
    bad = tmp_path / "w.toml"
    bad.write_text('num_requests = 10\nrate = 5\n[workload]\nname = "gsp"\nquestion_len = -3\n')
    line = one_error_line(schedctl("simulate", "--workload-file", str(bad)))
    assert str(bad) in line and "question_len" in line and "greater than" in line


def test_bad_trace_line_stops_the_run_and_leaves_no_output_behind(tmp_path: Path):
    trace = tmp_path / "t.jsonl"
    good = {"request_id": 0, "arrival_s": 0.0, "prompt": [1, 2, 3], "output_len": 4}
    trace.write_text(json.dumps(good) + "\n" + json.dumps({**good, "request_id": 1, "arrival_s": 0.1}) + "\n"
                     + '{"request_id": 2, "arrival_s": 0.2, "prompt": [1], "output_len": -1}\n')
    out, plot = tmp_path / "reqs.jsonl", tmp_path / "p.png"
    line = one_error_line(schedctl("simulate", "--trace", str(trace), "--requests-out", str(out), "--plot", str(plot)))
    assert str(trace) in line and "line 3" in line and "output_len" in line
    assert not out.exists() and not plot.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]  # no temporary files either


def test_malformed_profile_catalog_names_the_file_and_field(tmp_path: Path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    repo_config = Path(__file__).resolve().parents[1] / "config"
    (cfg / "models.toml").write_text((repo_config / "models.toml").read_text())
    gpus = (repo_config / "gpus.toml").read_text()
    gpus = gpus.replace("memory_bandwidth_gbps = 3350", 'memory_bandwidth_gbps = "fast"')
    (cfg / "gpus.toml").write_text(gpus)
    line = one_error_line(schedctl("simulate", "--num-requests", "10", env={"SCHEDCTL_CONFIG_DIR": str(cfg)}))
    assert "gpus.toml" in line and "h100-sxm.memory_bandwidth_gbps" in line


def test_bad_step_profile_names_the_file_and_field(tmp_path: Path):
    prof = tmp_path / "p.toml"
    prof.write_text("[step_time]\noverhead_s = -1\n")
    line = one_error_line(schedctl("simulate", "--num-requests", "10", "--step-profile", str(prof)))
    assert str(prof) in line and "step_time." in line


def test_atomic_writer_leaves_nothing_when_the_body_fails(tmp_path: Path):
    dest = tmp_path / "out.txt"
    dest.write_text("before")
    with pytest.raises(RuntimeError), AtomicWriter(dest) as fh:
        fh.write("half")
        raise RuntimeError("interrupted")
    assert dest.read_text() == "before"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_sglang_serve_dry_run_enables_the_plugin_metrics_and_request_export(tmp_path: Path):
    proc = schedctl("sglang", "serve", "--dry-run", "--request-metrics-dir", str(tmp_path / "m"), "--",
                    "--model-path", "some/model", "--port", "30001")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("SGLANG_PLUGINS=schedctl ") and "-m sglang.launch_server" in line
    for flag in ("--model-path some/model", "--port 30001", "--enable-metrics", "--export-metrics-to-file",
                 f"--export-metrics-to-file-dir {tmp_path / 'm'}", "--schedule-policy lpm"):
        assert flag in line


def test_a_huge_k_is_one_short_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from schedctl.cli.common import UsageError, parse_or_usage
    from schedctl.policies.spec import parse_policy

    for digits in (400, 5000):  # 5000: past Python's int-from-string limit
        with pytest.raises(UsageError) as err:
            parse_or_usage(parse_policy, "klpm:" + "9" * digits, "POLICY")
        assert "k must be <= 1000000" in str(err.value) and len(str(err.value)) < 200
