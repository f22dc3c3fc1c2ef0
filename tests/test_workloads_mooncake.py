"""Mooncake FAST'25 traces read as schedctl requests (workloads/mooncake.py, through read_trace)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from schedctl.files import InputFileError
from schedctl.policies.radix import common_prefix_len
from schedctl.workloads.mooncake import BLOCK_TOKENS
from schedctl.workloads.trace import read_trace

# Two lines of Mooncake's FAST25-release/traces/synthetic_trace.jsonl (kvcache-ai/Mooncake, Apache-2.0): the
# second request shares the first's first five 512-token blocks, then has a block of its own.
REAL = [
    {"timestamp": 3437, "input_length": 2752, "output_length": 35, "hash_ids": [708, 709, 710, 711, 712, 713]},
    {"timestamp": 16801, "input_length": 2754, "output_length": 50, "hash_ids": [708, 709, 710, 711, 712, 1469]},
]


def write(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_equal_block_hashes_are_a_shared_prefix_and_nothing_more(tmp_path: Path) -> None:
    a, b = read_trace(write(tmp_path / "t.jsonl", REAL))
    assert (len(a.prompt), len(b.prompt)) == (2752, 2754)
    assert common_prefix_len(a.prompt, 0, b.prompt) == 5 * BLOCK_TOKENS
    assert (a.arrival_s, b.arrival_s) == (3.437, 16.801) and (a.output_len, b.output_len) == (35, 50)
    assert (a.request_id, b.request_id) == (0, 1)


def test_a_block_at_another_position_is_not_a_prefix(tmp_path: Path) -> None:
    lines = [{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]},
             {"timestamp": 1, "input_length": 1024, "output_length": 1, "hash_ids": [2, 1]}]
    a, b = read_trace(write(tmp_path / "t.jsonl", lines))
    assert common_prefix_len(a.prompt, 0, b.prompt) == 0


@pytest.mark.parametrize(("line", "says"), [
    ({"timestamp": 0, "input_length": 1100, "output_length": 1, "hash_ids": [1, 2]}, "needs 3 of 512"),
    ({"timestamp": 0, "input_length": 10, "output_length": 0, "hash_ids": [1]}, "output_length"),
    ({"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": []}, "hash_ids"),
    ({"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [1]}, "timestamp"),
])
def test_a_bad_line_names_the_file_the_line_and_the_reason(tmp_path: Path, line: dict[str, object],
                                                           says: str) -> None:
    path = write(tmp_path / "t.jsonl", [REAL[0], line])
    with pytest.raises(InputFileError, match=rf"line 2: .*{says}"):
        list(read_trace(path))


def test_lines_must_be_sorted_by_time(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="line 2: timestamp 3437 is before"):
        list(read_trace(write(tmp_path / "t.jsonl", [REAL[1], REAL[0]])))


def test_simulate_replays_a_mooncake_trace_and_its_shared_blocks_hit_the_cache(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", [*REAL, {**REAL[1], "timestamp": 20000}])
    done = subprocess.run([sys.executable, "-m", "schedctl", "simulate", "--trace", str(path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["requests"] == 3
    cached = 5 * BLOCK_TOKENS + 2754  # at most: the second finds 5 blocks, the third (the same prompt) all of it
    assert 0 < summary["cache_hit_rate"] <= cached / (2752 + 2 * 2754)
