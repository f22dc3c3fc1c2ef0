"""`schedctl load` from the command line against tests/fake_stream_server.py: bad input is one `error:` line with
the right exit code, never a traceback, and what was measured is still written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_stream_server import Behaviour, FakeStreamServer, dead_port

from schedctl.cli import app
from schedctl.cli.common import fail_cleanly
from schedctl.sim.run import SimSummary
from schedctl.workloads import Request, write_trace

SMALL = ("--workload", "gsp:num_groups=2,system_prompt_len=16,question_len=4,output_len=3", "--rate", "50")


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """Run the command in this process, as `schedctl` would (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["schedctl", *args])
    rc = fail_cleanly(app)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.out, out.err


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_json_summary_has_the_simulators_field_names_and_records_its_columns(capsys, monkeypatch, tmp_path):
    out = tmp_path / "load.jsonl"
    with FakeStreamServer(lambda i: Behaviour(mode="http_500" if i == 2 else "ok")) as srv:
        rc, stdout, _ = cli(capsys, monkeypatch, "load", "--url", srv.url, *SMALL, "--num-requests", "6",
                            "--json", "--requests-out", str(out))
        ids = [t for s in srv.seen for t in s.body["input_ids"]]
    assert rc == 0
    assert max(ids) < 32000  # a workload's synthetic ids are fitted into a vocabulary every common model has
    summary = json.loads(stdout)
    shared = {"requests", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "ttft_max_s", "tbt_p50_s", "tbt_p99_s",
              "throughput_rps", "cache_hit_rate"}
    assert shared <= SimSummary.model_fields.keys() and shared <= summary.keys()
    assert summary["requests"] == 5 and summary["errors"] == 1 and summary["timeouts"] == 0
    assert summary["duration_s"] > 0 and summary["cache_hit_rate"] > 0  # gsp prompts share their system prompt
    sim_out = tmp_path / "sim.jsonl"
    rc, _, _ = cli(capsys, monkeypatch, "simulate", *SMALL, "--num-requests", "3", "--json",
                   "--requests-out", str(sim_out))
    assert rc == 0
    sim_cols = read_jsonl(sim_out)[0].keys() - {"retractions"}  # a client cannot see retractions
    rows = read_jsonl(out)
    assert len(rows) == 6 and all(sim_cols <= r.keys() for r in rows if r["status"] == "ok")
    assert [r["status"] for r in rows].count("error") == 1


def test_a_dead_port_says_unreachable_and_writes_the_failed_requests(capsys, monkeypatch, tmp_path):
    out = tmp_path / "r.jsonl"
    url = f"http://127.0.0.1:{dead_port()}"
    rc, _, err = cli(capsys, monkeypatch, "load", "--url", url, *SMALL, "--num-requests", "3",
                     "--requests-out", str(out))
    assert rc == 1
    line = error_line(err)
    assert url in line and "unreachable" in line and "all 3 requests" in line
    assert [r["status"] for r in read_jsonl(out)] == ["error"] * 3


def test_a_server_answering_500_is_one_error_line_with_the_status(capsys, monkeypatch, tmp_path):
    out = tmp_path / "r.jsonl"
    with FakeStreamServer(Behaviour(mode="http_500")) as srv:
        rc, _, err = cli(capsys, monkeypatch, "load", "--url", srv.url, *SMALL, "--num-requests", "3",
                         "--requests-out", str(out))
    assert rc == 1
    assert "every request failed" in error_line(err) and "HTTP 500" in err
    assert all(str(r["error"]).startswith("HTTP 500") for r in read_jsonl(out))


def test_a_malformed_trace_line_names_file_and_line_and_nothing_is_sent(capsys, monkeypatch, tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [Request(0, 0.0, [1, 2], 2), Request(1, 0.1, [1, 3], 2)])
    with trace.open("a") as fh:
        fh.write('{"request_id": 2, "arrival_s": 0.2, "prompt": [1], "output_len": 0}\n')
    with FakeStreamServer() as srv:
        rc, _, err = cli(capsys, monkeypatch, "load", "--url", srv.url, "--trace", str(trace))
        assert srv.seen == []
    assert rc == 2
    line = error_line(err)
    assert str(trace) in line and "line 3" in line and "output_len" in line and "nothing was sent" in line


def test_a_trace_of_synthetic_ids_needs_vocab_size(capsys, monkeypatch, tmp_path):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [Request(0, 0.0, [1, 1 << 24], 2)])
    rc, _, err = cli(capsys, monkeypatch, "load", "--url", f"http://127.0.0.1:{dead_port()}", "--trace", str(trace))
    assert rc == 2 and "--vocab-size" in error_line(err)


@pytest.mark.parametrize("args, words", [
    (("--url", "http://192.0.2.1:30000"), ("not loopback", "--allow-remote")),
    (("--workload", "gsp", "--trace", "x.jsonl"), ("--workload and --trace",)),
    (("--rate", "5", "--time-scale", "2"), ("--rate and --time-scale",)),
    (("--trace", "x.jsonl", "--seed", "3"), ("--seed with --trace",)),
    (("--max-inflight", "0"), ("--max-inflight",)),
    (("--duration-s", "5", "--warmup-s", "5"), ("--warmup-s",)),
    (("--requests-out", "/proc/no/such/dir/r.jsonl"), ("--requests-out",)),
])
def test_options_that_cannot_go_together_are_one_error_line(capsys, monkeypatch, args, words):
    rc, _, err = cli(capsys, monkeypatch, "load", "--url", f"http://127.0.0.1:{dead_port()}", *args)
    assert rc == 2
    line = error_line(err)
    assert all(w in line for w in words), line


@pytest.mark.timeout(600)
def test_ctrl_c_mid_run_writes_what_was_measured(tmp_path):
    out = tmp_path / "r.jsonl"
    # request 0 answers at once; the others take far longer than the test waits (and never time out: a busy
    # host may take most of a minute to start the command and send them)
    with FakeStreamServer(lambda i: Behaviour(first_token_delay_s=0.0 if i == 0 else 600.0)) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "schedctl", "load", "--url", srv.url, *SMALL, "--num-requests", "5",
             "--request-timeout-s", "900", "--requests-out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 240  # bounds, not expectations: a busy host starts the command slowly
            while (len(srv.seen) < 5 or srv.finished < 1) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(1.0)  # let the client read the end of request 0's stream
            assert len(srv.seen) == 5 and srv.finished >= 1, "the command did not send its requests in time"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in error_line(err)
    rows = read_jsonl(out)
    assert rows[0]["status"] == "ok" and rows[0]["output_tokens"] == 3
    assert len(rows) == 5 and all(r["status"] == "cancelled" for r in rows[1:])
