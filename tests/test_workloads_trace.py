"""JSONL traces: exact round trips, compact runs, line-numbered errors, atomic writes, lazy reads."""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedctl.files import InputFileError
from schedctl.workloads import WORKLOADS, Request, make_requests, read_trace, write_trace
from schedctl.workloads.trace import decode_tokens, encode_tokens


@pytest.mark.parametrize(
    "workload", [*WORKLOADS, "sharegpt:strict_fraction=0.4", "gsp:range_ratio=0.3,group_distribution=zipf,"
                 "zipf_alpha=1"],
)
def test_round_trip_gives_identical_requests(tmp_path: Path, workload: str) -> None:
    reqs = list(make_requests(workload, 30.0, "gamma:cv=2", num_requests=400, seed=5))
    path = tmp_path / "t.jsonl"
    assert write_trace(path, reqs) == 400
    back = list(read_trace(path))
    assert back == reqs
    assert [type(r.arrival_s) for r in back[:3]] == [float] * 3


def test_synthetic_prompts_are_stored_as_runs(tmp_path: Path) -> None:
    reqs = list(make_requests("gsp", 10.0, num_requests=50))
    path = tmp_path / "t.jsonl"
    write_trace(path, reqs)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["prompt"] == [[reqs[0].prompt[0], 2048], [reqs[0].prompt[2048], 128]]
    assert path.stat().st_size < 200 * 50


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 2**62), st.tuples(st.integers(0, 2**62), st.integers(1, 20))),
                min_size=1, max_size=30))
def test_encode_decode_inverse(parts: list[int | tuple[int, int]]) -> None:
    ids: list[int] = []
    for part in parts:
        ids.extend([part] if isinstance(part, int) else range(part[0], part[0] + part[1]))
    tokens = array("q", ids)
    encoded = encode_tokens(tokens)
    assert len(encoded) <= len(tokens)
    items = [tuple(x) if isinstance(x, list) else x for x in encoded]
    assert decode_tokens(items) == tokens  # type: ignore[arg-type]


GOOD = {"request_id": 0, "arrival_s": 0.5, "prompt": [1, 2, [100, 5]], "output_len": 3}


def _line(**changes: object) -> str:
    obj = {**GOOD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (_line(output_len=...), "output_len: Field required"),
        (_line(output_len=-3), "output_len"),
        (_line(prompt=[]), "prompt"),
        (_line(prompt=[1, -2]), "prompt"),
        (_line(prompt=[[5, 0]]), "prompt"),
        (_line(arrival_s=0.1), "before the previous line"),
        (_line(request_id=1, arrival_s=-1.0), "arrival_s"),
        (_line(request_id=0, arrival_s=2.0), "request_id 0 appears twice"),
        (_line(request_id=1, arrival_s=2.0, output_tokens=[7, 8]), "output_tokens has 2 ids, output_len is 3"),
        (_line(request_id=1, arrival_s=2.0, colour="red"), "colour"),
    ],
)
def test_malformed_lines_name_file_line_and_reason(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(_line() + "\n\n" + bad_line + "\n")
    it = read_trace(path)
    assert next(it).request_id == 0  # lazy: the good first line comes out before the bad line is read
    with pytest.raises(InputFileError) as err:
        next(it)
    msg = str(err.value)
    assert msg.startswith(f"{path}: line 3: ") and reason in msg


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="file not found"):
        list(read_trace(tmp_path / "absent.jsonl"))


def test_failed_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    write_trace(path, make_requests("rasq", 5.0, num_requests=3))
    before = path.read_text()

    def failing() -> Iterator[Request]:
        yield from make_requests("rasq", 5.0, num_requests=10, seed=9)
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError):
        write_trace(path, failing())
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]
    unsorted = [Request(0, 2.0, (1,), 1), Request(1, 1.0, (2,), 1)]
    with pytest.raises(ValueError, match="sorted by arrival"):
        write_trace(tmp_path / "u.jsonl", unsorted)
    assert not (tmp_path / "u.jsonl").exists()
