"""Recording an operator's traffic on a real SGLang 0.5.23 server on this CPU (marker `live`).

The server is started the operator's way, `schedctl sglang serve --cpu --record-trace FILE`; shared-prefix
traffic comes from `schedctl load`; the recorded file is read back through `--trace` (`schedctl simulate`). What
must hold: equal prompt prefixes show as equal block-hash ids, different ones as different ids, the lengths are
those sent, and nothing in the file is a token id or text.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_support import START_TIMEOUT_S, wait_until

from schedctl.engine_adapter.sglang.launcher import ServerProcess, free_port
from schedctl.engine_adapter.sglang.tiny_model import write_tiny_model
from schedctl.policies.radix import common_prefix_len
from schedctl.workloads.mooncake import BLOCK_TOKENS
from schedctl.workloads.trace import read_trace

pytestmark = pytest.mark.live

SCHEDCTL = str(Path(sys.executable).with_name("schedctl"))
# 2 groups x 6 questions: a 1,100-token system prompt (two full 512-token blocks of it alone), 40-token questions
WORKLOAD = "gsp:num_groups=2,prompts_per_group=6,system_prompt_len=1100,question_len=40,output_len=3"
REQUESTS = 12


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, Path]]:
    d = tmp_path_factory.mktemp("live-record")
    model = write_tiny_model(d / "tiny-llama")
    trace = d / "recorded.jsonl"
    port = free_port()
    argv = [SCHEDCTL, "sglang", "serve", "--cpu", "--request-metrics-dir", str(d / "metrics"), "--record-trace",
            str(trace), "--", "--model-path", str(model), "--load-format", "dummy", "--port", str(port)]
    server = ServerProcess(argv, dict(os.environ), log_path=d / "server.log")
    try:
        server.start()
        server.wait_healthy(START_TIMEOUT_S)
        load = subprocess.run([SCHEDCTL, "load", "--url", server.url, "--workload", WORKLOAD, "--rate", "20",
                               "--num-requests", str(REQUESTS), "--seed", "3", "--json"],
                              capture_output=True, text=True, timeout=300)
        assert load.returncode == 0, load.stderr
        assert json.loads(load.stdout)["errors"] == 0
        assert wait_until(lambda: trace.exists() and len(trace.read_text().splitlines()) >= REQUESTS, 30.0)
        yield server, trace, d / "server.log"
    finally:
        server.stop()


def test_a_recorded_trace_shows_shared_prefixes_as_equal_block_ids_and_holds_no_ids(
        recorded: tuple[ServerProcess, Path, Path]) -> None:
    _server, trace, _log = recorded
    every_line = [json.loads(x) for x in trace.read_text().splitlines()]
    lines = [line for line in every_line if line["input_length"] == 1140]  # ours; SGLang's start-up warm-up too
    assert len(lines) == REQUESTS and len(every_line) - REQUESTS <= 1
    for line in every_line:
        assert set(line) == {"timestamp", "input_length", "output_length", "hash_ids"}
    for line in lines:
        assert set(line) == {"timestamp", "input_length", "output_length", "hash_ids"}
        assert line["input_length"] == 1140 and line["output_length"] == 3
        assert len(line["hash_ids"]) == math.ceil(1140 / BLOCK_TOKENS)
    # the first two blocks are the group's system prompt: one pair of ids per group, two groups
    heads = {tuple(line["hash_ids"][:2]) for line in lines}
    assert len(heads) == 2
    # the third block holds each request's own question: all distinct
    assert len({line["hash_ids"][2] for line in lines}) == REQUESTS
    # ids are small integers numbered from 0 in order of first appearance: no token id, digest or text
    every = [h for line in every_line for h in line["hash_ids"]]
    assert sorted(set(every)) == list(range(len(set(every))))
    assert [line["timestamp"] for line in every_line] == sorted(line["timestamp"] for line in every_line)


def test_the_recorded_trace_replays_through_trace_with_its_prefix_structure(
        recorded: tuple[ServerProcess, Path, Path], tmp_path: Path) -> None:
    _server, trace, _log = recorded
    reqs = [r for r in read_trace(trace) if len(r.prompt) == 1140]
    same = [r for r in reqs[1:] if common_prefix_len(reqs[0].prompt, 0, r.prompt) == 2 * BLOCK_TOKENS]
    assert len(same) == REQUESTS // 2 - 1  # the other questions of the first request's group
    out = subprocess.run([SCHEDCTL, "simulate", "--trace", str(trace), "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["requests"] >= REQUESTS and summary["cache_hit_rate"] > 0.5
