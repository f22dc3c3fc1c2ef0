"""`schedctl sim serve` over a real socket on 127.0.0.1: SGLang's /generate, /metrics, /server_info and
/set_internal_state as schedctl's own SGLang client code (the load generator, the adapter) reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_support import assert_one_error_line, run_cli
from prometheus_client.parser import text_string_to_metric_families

from schedctl.engine_adapter.base import UnsupportedPolicy
from schedctl.engine_adapter.sglang import metrics
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.loadgen import LoadConfig, retime, run_load
from schedctl.policies.spec import KLPMSpec, SLAISpec
from schedctl.simserve.procs import Proc, free_port, start_replica
from schedctl.workloads.registry import make_requests, parse_arrival, parse_rate, parse_workload


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_replica("replica", free_port(), tmp_path_factory.mktemp("simserve"),
                         ["--gpu", "a100-80gb", "--policy", "lpm", "--time-scale", "10"])
    try:
        yield proc
    finally:
        proc.stop()


def _client(proc: Proc) -> httpx.Client:
    return httpx.Client(base_url=proc.url or "", timeout=30.0, trust_env=False)


def test_generate_answers_as_sglang_streaming_and_not(replica):
    with _client(replica) as c:
        body = {"input_ids": list(range(100, 400)), "sampling_params": {"max_new_tokens": 5}, "rid": "r1"}
        one = c.post("/generate", json=body).json()
        assert len(one["output_ids"]) == 5
        meta = one["meta_info"]
        assert meta["id"] == "r1" and meta["prompt_tokens"] == 300 and meta["completion_tokens"] == 5
        assert meta["finish_reason"] == {"type": "length", "length": 5} and meta["e2e_latency"] > 0
        lines = [ln for ln in c.post("/generate", json={**body, "stream": True}).text.splitlines() if ln]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]
        counts = [ch["meta_info"]["completion_tokens"] for ch in chunks]
        assert counts == sorted(counts) and counts[-1] == 5 and [len(ch["output_ids"]) for ch in chunks] == counts
        assert chunks[-1]["meta_info"]["cached_tokens"] >= 298  # the same prompt again: its prefix is cached
        assert all(ch["meta_info"]["finish_reason"] is None for ch in chunks[:-1])
        bad = c.post("/generate", json={"text": "hello"})
        assert bad.status_code == 400 and "input_ids" in bad.json()["error"]["message"]


def test_server_info_says_it_is_a_stand_in(replica):
    with _client(replica) as c:
        info = c.get("/server_info").json()
        assert c.get("/get_server_info").json()["schedctl_stand_in"] == info["schedctl_stand_in"]
        assert c.get("/health").status_code == 200 and c.get("/model_info").json()["is_generation"] is True
    assert info["schedctl_stand_in"].startswith("simulated GPU replica: NVIDIA A100")
    assert info["schedule_policy"] == "lpm" and info["time_scale"] == 10


def test_the_adapter_reads_its_metrics_as_sglang_s(replica):
    reqs = list(make_requests(parse_workload("gsp:output_len=8,num_groups=4"), parse_rate("4"),
                              parse_arrival("poisson"), 30, None, 1))
    adapter = SGLangAdapter(replica.url or "")
    try:
        adapter.observe()  # the baseline
        load = run_load(retime(reqs, time_scale=0.1), LoadConfig(url=replica.url or "", vocab_size=32000))
        assert load.summary.requests == 30 and load.summary.errors == 0
        obs = adapter.observe()
        text = httpx.get(f"{replica.url}/metrics", trust_env=False).text
        scrape = metrics.parse_scrape(text)
    finally:
        adapter.close()
    assert {name.removesuffix("_total") for name in metrics.METRICS_READ} <= scrape.families  # every one declared
    assert obs.completions == 30 and not obs.stale
    assert sum(obs.ttft.bucket_counts) == 30 and sum(obs.tbt.bucket_counts) == 30 * 7
    # the replica reports its engine's TTFTs, in simulated seconds (not the client's wall seconds, which on a busy
    # host are mostly HTTP and scheduling delay)
    family = next(f for f in text_string_to_metric_families(text) if f.name == metrics.TTFT)
    server_sum_s = sum(x.value for x in family.samples if x.name.endswith("_sum"))
    server_count = sum(x.value for x in family.samples if x.name.endswith("_count"))
    engine_ttfts = httpx.get(f"{replica.url}/schedctl_sim/ttfts", trust_env=False).json()["ttft_s"]
    assert server_count == len(engine_ttfts) >= 30  # these 30 and any the module's earlier tests sent
    assert server_sum_s == pytest.approx(sum(engine_ttfts), rel=1e-6)
    assert obs.prompt_tokens_mean == pytest.approx(sum(len(r.prompt) for r in reqs) / 30)


def test_policies_pushed_through_the_plugin_keys_are_applied_and_read_back(replica):
    adapter = SGLangAdapter(replica.url or "")

    def active() -> str:
        return httpx.get(f"{replica.url}/server_info", trust_env=False).json()["internal_states"][0][
            "schedctl_sim"]["active_policy"]

    try:
        adapter.apply(KLPMSpec(k=2))
        assert adapter.status()[1] == KLPMSpec(k=2) and active() == "klpm:2"
        adapter.apply(KLPMSpec(k=1))
        assert active() == "fcfs"
        with pytest.raises(UnsupportedPolicy):
            adapter.apply(SLAISpec())  # a token-budget family in the embedded engine: refused, not half-applied
        assert active() == "fcfs"
        adapter.apply(None)  # off: the replica's own --policy
        assert adapter.status()[1] is None and active() == "lpm"
    finally:
        adapter.close()
    bad = httpx.post(f"{replica.url}/set_internal_state", json={"server_args": {"schedctl_policy_kind": 9}},
                     trust_env=False)
    assert bad.json() == [False]


@pytest.mark.parametrize("args", [
    ["sim", "serve", "--time-scale", "0"],
    ["sim", "serve", "--host", "10.1.2.3"],
    ["sim", "serve", "--policy", "klpm:0"],
    ["sim", "serve", "--gpu", "tpu"],
])
def test_bad_options_are_one_line(capsys, monkeypatch, args):
    code, _out, err = run_cli(capsys, monkeypatch, args)
    assert_one_error_line(code, err, args)


def test_a_replica_that_cannot_start_says_why(tmp_path: Path):
    port = free_port()
    with pytest.raises(RuntimeError, match="exited with code 2"):
        start_replica("bad", port, tmp_path, ["--gpu", "tpu"], timeout_s=30)
