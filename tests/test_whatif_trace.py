"""`schedctl whatif --trace` (bench/trace_whatif.py, cli/whatif.py) and the plugin's trace recorder's pure core
(engine_adapter/sglang/recorder.py; the live test against a real server is tests/test_live_record.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cli_support import assert_one_error_line, run_cli

from schedctl.bench.trace_whatif import WhatIfRow, recommend, write_settings
from schedctl.engine_adapter.sglang.recorder import BlockHasher, TraceRecorder
from schedctl.settings import load_settings
from schedctl.workloads.trace import read_trace

MOONCAKE = Path(__file__).resolve().parents[1] / "config" / "traces" / "mooncake-synthetic.jsonl"


def row(policy: str, p99: float, attainment: float) -> WhatIfRow:
    return WhatIfRow(policy=policy, requests=10, ttft_p50_s=p99 / 2, ttft_p99_s=p99, attainment=attainment,
                     cache_hit_rate=0.5)


def test_adaptive_is_recommended_within_the_tolerance_else_the_best_static_policy() -> None:
    rows = [row("adaptive", 10.4, 0.8), row("fcfs", 30, 0.5), row("lpm", 10, 0.82)]
    rec = recommend(rows, ["fcfs", "lpm"], "fcfs")
    assert (rec.policy, rec.best_static, rec.p99_gain) == ("adaptive", "lpm", 30 / 10.4)
    assert rec.attainment_gain == pytest.approx(0.3)
    rows[0] = row("adaptive", 11, 0.8)
    rec = recommend(rows, ["fcfs", "lpm"], "fcfs")
    assert (rec.policy, rec.p99_gain) == ("lpm", 3.0)


def test_the_settings_written_load_and_carry_the_recommendation(tmp_path: Path) -> None:
    rows = [row("adaptive", 20, 0.8), row("fcfs", 30, 0.5), row("lpm", 10, 0.82)]
    out = tmp_path / "rec.toml"
    write_settings(out, {"slo": {"ttft_p99_target_ms": 1500}}, recommend(rows, ["fcfs", "lpm"], "fcfs"), None, "t")
    s = load_settings(out)
    assert (s.tuner.initial_policy, s.service.mode, s.slo.ttft_p99_target_ms) == ("lpm", "advisory", 1500)
    assert "Recommendation: lpm" in out.read_text()


def test_whatif_replays_a_trace_under_the_arms_and_adaptive(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(MOONCAKE.read_text().splitlines(keepends=True)[:200]))
    out_toml, plot = tmp_path / "rec.toml", tmp_path / "w.png"
    code, out, err = run_cli(capsys, monkeypatch, ["whatif", "--trace", str(trace), "--time-scale", "3", "--arms",
                                                   "fcfs,klpm:4,lpm", "--current", "fcfs", "--jobs", "1", "--json",
                                                   "--settings-out", str(out_toml), "--plot", str(plot)])
    assert code == 0, err
    doc = json.loads(out)
    rows = {r["policy"]: r for r in doc["rows"]}
    assert set(rows) == {"adaptive", "fcfs", "klpm:4", "lpm"}
    assert all(r["requests"] == 200 for r in rows.values())
    assert all(r["cache_hit_rate"] > 0 for r in rows.values())  # the trace's shared blocks hit the cache
    rec = doc["recommendation"]
    # the best static policy has the lowest P99 (ties: the higher attainment)
    assert rows[rec["best_static"]]["ttft_p99_s"] == min(rows[p]["ttft_p99_s"] for p in ("fcfs", "klpm:4", "lpm"))
    assert rec["p99_gain"] == pytest.approx(rows["fcfs"]["ttft_p99_s"] / rows[rec["policy"]]["ttft_p99_s"])
    assert load_settings(out_toml).tuner.arms == [1, 4, "inf"]
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize(("args", "says"), [
    (["--arms", "fcfs"], "--arms"), (["--current", "nope"], "--current"), (["--time-scale", "-1"], "--time-scale"),
])
def test_whatif_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch, args: list[str], says: str) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(MOONCAKE.read_text().splitlines(keepends=True)[0])
    full = ["whatif", "--trace", str(trace), *args]
    code, _out, err = run_cli(capsys, monkeypatch, full)
    assert says in assert_one_error_line(code, err, full)


def test_block_hashes_are_chained_so_equal_ids_mean_equal_prefixes() -> None:
    h = BlockHasher(block_tokens=4)
    a = h.hash_ids([1, 2, 3, 4, 5, 6, 7, 8, 9])
    b = h.hash_ids([1, 2, 3, 4, 5, 6, 7, 8, 10])
    c = h.hash_ids([0, 0, 0, 0, 5, 6, 7, 8])  # block 2 equal to a's, after a different block 1
    assert a == [0, 1, 2] and b == [0, 1, 3] and c == [4, 5]


def test_the_recorder_writes_mooncake_lines_read_back_by_trace_and_stops_at_its_cap(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = iter([10.0, 10.25, 11.0, 12.0, 13.0])
    rec = TraceRecorder(tmp_path / "r.jsonl", max_bytes=200, clock=lambda: next(clock))
    prompt = list(range(1000, 1700))
    with caplog.at_level(logging.WARNING, logger="schedctl.sglang.recorder"):
        assert rec.record(prompt, 5) and rec.record(prompt[:600] + [7] * 10, 3)
        assert not rec.record(prompt, 5) and not rec.record(prompt, 5)  # over the cap: stopped, said once
    assert [r.message for r in caplog.records if "stopped" in r.message] != []
    assert len([r for r in caplog.records if "stopped" in r.message]) == 1
    a, b = read_trace(tmp_path / "r.jsonl")
    assert (a.arrival_s, b.arrival_s, len(a.prompt), len(b.prompt), b.output_len) == (0.0, 0.25, 700, 610, 3)
    assert a.prompt[:512] == b.prompt[:512] and a.prompt[512:600] != b.prompt[512:600]
    assert "1000" not in (tmp_path / "r.jsonl").read_text()  # no token id
    again = TraceRecorder(tmp_path / "r.jsonl")
    assert not again.record(prompt, 1) and "FileExistsError" in (again.stopped or "")  # never overwrites


def test_arms_off_the_k_axis_keep_their_labels() -> None:
    from schedctl.cli.whatif import parse_arms
    from schedctl.controller.ktuner import KTunerParams

    _params, arms = parse_arms("fcfs,klpm:4,lpm,hrrn,spf,lpm-aging:64", KTunerParams())
    assert arms == [1, 4, "inf", "hrrn", "spf", "lpm-aging:64"]  # hrrn is not lpm's "inf"
