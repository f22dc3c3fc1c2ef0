"""Azure LLM inference trace CSVs read as schedctl requests (workloads/azure.py, through read_trace), and
--time-scale (workloads.trace.time_scaled; `schedctl simulate --time-scale`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import assert_one_error_line, run_cli

from schedctl.files import InputFileError
from schedctl.policies.radix import common_prefix_len
from schedctl.workloads.trace import read_trace, time_scaled

# The header and the first rows' shape of AzurePublicDataset's AzureLLMInferenceTrace_code.csv (2023)
HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROWS = ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,109",
        "2023-11-16 18:15:51.0000000,396,0"]


def write(path: Path, rows: list[str], head: str = HEAD) -> Path:
    path.write_text(head + "".join(r + "\n" for r in rows))
    return path


def test_rows_become_requests_with_arrivals_from_the_first_row_and_no_shared_prefix(tmp_path: Path) -> None:
    a, b, c = read_trace(write(tmp_path / "code.csv", ROWS))
    assert (a.arrival_s, round(b.arrival_s, 7), round(c.arrival_s, 6)) == (0.0, 4.314579, 4.31941)
    assert (len(a.prompt), a.output_len, len(b.prompt), b.output_len) == (374, 44, 396, 109)
    assert c.output_len == 1  # 0 generated tokens: replayed with one (every request has a first token)
    assert common_prefix_len(b.prompt, 0, c.prompt) == 0 and common_prefix_len(a.prompt, 0, b.prompt) == 0
    assert [r.request_id for r in (a, b, c)] == [0, 1, 2]


def test_the_2024_form_with_a_utc_offset_reads_and_the_header_not_the_extension_decides(tmp_path: Path) -> None:
    rows = ["2024-05-10 00:00:00.009930+00:00,2048,28", "2024-05-10 00:00:00.509930+00:00,100,3"]
    _a, b = read_trace(write(tmp_path / "conv.txt", rows))
    assert round(b.arrival_s, 6) == 0.5


@pytest.mark.parametrize(("row", "says"), [
    ("2023-11-16 18:15:47,10", "expected 3 columns"),
    ("yesterday,10,1", "TIMESTAMP 'yesterday' is not a date"),
    ("2023-11-16 18:15:47,0,1", "ContextTokens 0 must be >= 1"),
    ("2023-11-16 18:15:47,ten,1", "ContextTokens 'ten' is not an integer"),
    ("2023-11-16 18:15:47,10,-1", "GeneratedTokens -1 must be >= 0"),
    ("2023-11-16 18:15:40,10,1", "before the previous row"),
])
def test_a_bad_row_names_the_file_the_line_and_the_reason(tmp_path: Path, row: str, says: str) -> None:
    path = write(tmp_path / "t.csv", [ROWS[0], row])
    with pytest.raises(InputFileError, match=rf"t\.csv: line 3: .*{says}"):
        list(read_trace(path))


def test_a_csv_without_the_header_is_refused_with_the_expected_header(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", ROWS, head="ts,in,out\n")
    with pytest.raises(InputFileError, match=r"line 1: a \.csv trace must start with the header TIMESTAMP,Context"):
        list(read_trace(path))


def test_time_scale_multiplies_arrivals_and_keeps_everything_else(tmp_path: Path) -> None:
    reqs = list(read_trace(write(tmp_path / "t.csv", ROWS)))
    half = list(time_scaled(reqs, 0.5))
    assert [r.arrival_s for r in half] == [r.arrival_s * 0.5 for r in reqs]
    assert [(r.prompt, r.output_len) for r in half] == [(r.prompt, r.output_len) for r in reqs]
    with pytest.raises(ValueError, match="time_scale"):
        list(time_scaled(reqs, 0.0))


def test_simulate_replays_a_trace_faster_with_time_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [f"2023-11-16 18:15:{i // 10:02d}.{i % 10}000000,3000,20" for i in range(40)]  # 10 req/s
    path = write(tmp_path / "t.csv", rows)
    ttft = {}
    for scale in ("1", "0.05"):
        code, out, err = run_cli(capsys, monkeypatch, ["simulate", "--trace", str(path), "--time-scale", scale,
                                                       "--json"])
        assert code == 0, err
        ttft[scale] = json.loads(out)["ttft_p99_s"]
    assert ttft["0.05"] > 2 * ttft["1"]  # 200 req/s of 3,000-token prompts queue; 10 req/s do not


@pytest.mark.parametrize("args", [["--time-scale", "0.5"], ["--trace", "T", "--time-scale", "0"]])
def test_time_scale_needs_a_trace_and_a_positive_number(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    path = write(tmp_path / "t.csv", ROWS)
    args = [str(path) if a == "T" else a for a in args]
    code, _out, err = run_cli(capsys, monkeypatch, ["simulate", *args])
    assert "--time-scale" in assert_one_error_line(code, err, args)
