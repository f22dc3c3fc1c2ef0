"""The load generator over a real socket on 127.0.0.1, against tests/fake_stream_server.py (a stand-in for SGLang's
streaming /generate that can pace, fail and break on demand). No wall-time upper bounds: only lower bounds the
server's deliberate delays guarantee, orderings and counts."""

from __future__ import annotations

import itertools
import json

import pytest
from fake_stream_server import Behaviour, FakeStreamServer, dead_port

from schedctl.loadgen import Api, LoadConfig, RemoteRefused, check_url, retime, run_load
from schedctl.loadgen.protocol import StreamError, fit_vocab
from schedctl.workloads import Request, make_requests, write_trace
from schedctl.workloads.trace import read_trace


def reqs(arrivals_s: list[float], output_len: int = 4, prompt_len: int = 8, shared: bool = False) -> list[Request]:
    return [Request(i, t, list(range(prompt_len)) if shared else [1000 * i + j for j in range(prompt_len)],
                    output_len) for i, t in enumerate(arrivals_s)]


def test_ttft_and_every_gap_follow_the_servers_pacing():
    first_s, gap_s = 0.15, 0.03
    with FakeStreamServer(Behaviour(first_token_delay_s=first_s, token_interval_s=gap_s)) as srv:
        res = run_load(reqs([0.0, 0.05, 0.1], output_len=5), LoadConfig(url=srv.url))
    assert res.summary.requests == 3 and res.summary.errors == 0
    for r in res.results:
        assert r.status == "ok" and r.output_tokens == 5
        assert r.ttft_s is not None and r.ttft_s >= first_s
        gaps = r.tbt_s()
        assert len(gaps) == 4  # tokens - 1
        assert all(g >= 0 for g in gaps) and sum(gaps) >= 4 * gap_s * 0.5
        assert r.send_s <= r.first_token_s <= r.token_times_s[-1] <= r.finish_s  # type: ignore[operator]
    assert res.summary.ttft_p50_s >= first_s and res.summary.tbt_p50_s > 0


def test_a_chunk_of_several_tokens_gives_its_gap_then_zero_gaps():
    with FakeStreamServer(Behaviour(token_interval_s=0.05, tokens_per_chunk=3)) as srv:
        res = run_load(reqs([0.0], output_len=6), LoadConfig(url=srv.url))
    (r,) = res.results
    gaps = r.tbt_s()
    assert r.output_tokens == 6 and len(gaps) == 5
    assert gaps[0] == gaps[1] == gaps[3] == gaps[4] == 0.0 and gaps[2] > 0  # chunks [t,t,t] [t',t',t']


def test_open_loop_sends_at_the_arrival_offsets_without_waiting_for_answers():
    arrivals = [0.0, 0.25, 0.5]
    with FakeStreamServer(Behaviour(first_token_delay_s=1.0)) as srv:  # each answer takes longer than the spacing
        res = run_load(reqs(arrivals), LoadConfig(url=srv.url))
        received = [s.received_s for s in sorted(srv.seen, key=lambda s: s.request_id)]
    assert srv.max_concurrent == 3  # all three were in flight at once: nobody waited for an answer
    for (a0, a1), (r0, r1) in zip(itertools.pairwise(arrivals), itertools.pairwise(received), strict=True):
        assert r1 - r0 >= (a1 - a0) * 0.8  # not sent early
    assert [r.scheduled_s for r in res.results] == arrivals
    assert all(r.send_s >= r.scheduled_s for r in res.results)


def test_max_inflight_bounds_concurrency_and_shows_as_send_lag():
    with FakeStreamServer(Behaviour(first_token_delay_s=0.2)) as srv:
        res = run_load(reqs([0.0, 0.0, 0.0]), LoadConfig(url=srv.url, max_inflight=1))
    assert srv.max_concurrent == 1 and res.summary.requests == 3
    assert res.summary.send_lag_max_s >= 0.2 * 2 * 0.8


def test_http_500_and_broken_streams_are_errors_with_their_reason():
    modes = {0: "ok", 1: "http_500", 2: "malformed", 3: "error_chunk", 4: "no_done"}
    with FakeStreamServer(lambda i: Behaviour(mode=modes[i])) as srv:  # type: ignore[arg-type]
        res = run_load(reqs([0.0] * 5), LoadConfig(url=srv.url))
    by_id = {r.request_id: r for r in res.results}
    assert res.summary.requests == 1 and res.summary.errors == 4 and by_id[0].status == "ok"
    assert by_id[1].error is not None and by_id[1].error.startswith("HTTP 500")
    assert "malformed stream" in (by_id[2].error or "")
    assert "injected stream error" in (by_id[3].error or "")
    assert "without [DONE]" in (by_id[4].error or "")
    assert not res.unreachable


def test_an_unexpected_failure_in_one_request_fails_that_request_only(monkeypatch):
    import schedctl.loadgen.client as client

    real = client.parse_data

    def flaky(api: Api, payload: str):  # type: ignore[no-untyped-def]
        if '"completion_tokens": 2' in payload:
            raise RuntimeError("boom")
        return real(api, payload)

    monkeypatch.setattr(client, "parse_data", flaky)
    with FakeStreamServer(lambda i: Behaviour(tokens_per_chunk=1 if i == 0 else 5)) as srv:
        res = run_load(reqs([0.0, 0.0], output_len=5), LoadConfig(url=srv.url))
    assert [r.status for r in res.results] == ["error", "ok"]
    assert res.results[0].error == "RuntimeError: boom"


def test_a_request_past_its_timeout_is_a_timeout_and_the_run_ends():
    with FakeStreamServer(lambda i: Behaviour(mode="hang" if i == 1 else "ok")) as srv:
        res = run_load(reqs([0.0, 0.0]), LoadConfig(url=srv.url, request_timeout_s=0.5))
    assert res.summary.timeouts == 1 and res.summary.requests == 1
    (late,) = [r for r in res.results if r.status == "timeout"]
    assert late.request_id == 1 and "0.5 s" in (late.error or "")


def test_a_dead_port_is_unreachable():
    res = run_load(reqs([0.0, 0.01]), LoadConfig(url=f"http://127.0.0.1:{dead_port()}"))
    assert res.unreachable and res.summary.errors == 2 and res.summary.requests == 0
    assert all("cannot connect" in (r.error or "") for r in res.results)


def test_duration_stops_sending_and_warmup_leaves_early_requests_out():
    arrivals = [0.0, 0.1, 0.2, 0.3, 0.4, 3600.0]  # the run must not wait for the last one
    with FakeStreamServer() as srv:
        res = run_load(reqs(arrivals), LoadConfig(url=srv.url, duration_s=1.0, warmup_s=0.15))
    assert [r.request_id for r in res.results] == [0, 1, 2, 3, 4]  # the one at 5 s is never sent
    assert res.stop_reason == "duration"
    assert res.summary.warmup_excluded == 2 and res.summary.requests == 3 and res.summary.sent == 3


def test_a_send_that_waited_for_a_slot_past_the_end_of_the_run_is_not_sent():
    with FakeStreamServer(Behaviour(first_token_delay_s=0.6)) as srv:
        res = run_load(reqs([0.0, 0.1]), LoadConfig(url=srv.url, max_inflight=1, duration_s=0.3))
        assert len(srv.seen) == 1
    assert [r.request_id for r in res.results] == [0] and res.stop_reason == "duration"


def test_cache_hit_rate_is_cached_over_prompt_tokens_as_the_server_reports_them():
    with FakeStreamServer() as srv:  # its cache: the longest prefix shared with an earlier prompt
        res = run_load(reqs([0.0, 0.3], prompt_len=10, shared=True), LoadConfig(url=srv.url))
    assert [r.cached_tokens for r in res.results] == [0, 9]
    assert res.summary.cache_hit_rate == pytest.approx(9 / 20)


def test_the_openai_completions_api_is_measured_the_same_way():
    # two tokens in the first chunk: only the cumulative usage.completion_tokens tells
    with FakeStreamServer(Behaviour(first_token_delay_s=0.1, token_interval_s=0.02, tokens_per_chunk=2)) as srv:
        res = run_load(reqs([0.0, 0.0], output_len=3), LoadConfig(url=srv.url, api=Api.OPENAI))
        assert all(s.body["prompt"] == list(s.body["prompt"]) and s.body["max_tokens"] == 3 for s in srv.seen)
    assert res.summary.requests == 2
    assert all(r.output_tokens == 3 and len(r.tbt_s()) == 2 and r.ttft_s >= 0.1 for r in res.results)  # type: ignore


def test_the_body_carries_the_token_ids_and_asks_for_exactly_output_len_tokens():
    with FakeStreamServer() as srv:
        run_load([Request(7, 0.0, [5, 6, 7], 2)], LoadConfig(url=srv.url))
        (seen,) = srv.seen
    assert seen.body["input_ids"] == [5, 6, 7] and seen.body["stream"] is True
    assert seen.body["sampling_params"] == {"max_new_tokens": 2, "ignore_eos": True, "temperature": 0.0}


def test_fit_vocab_keeps_ids_below_the_vocabulary_and_hashes_the_others_into_it():
    vocab = 1000
    ids = [5, 999, 1000, 1 << 24, (1 << 24) + 1, 1 << 24, 7]
    out = fit_vocab(ids, vocab)
    assert out[0] == 5 and out[1] == 999 and out[6] == 7  # already in range: unchanged
    assert all(0 <= t < vocab for t in out) and out[3] == out[5]  # equal ids stay equal
    assert len(set(fit_vocab(list(range(10**6, 10**6 + 50)), 32000))) >= 45  # different ids mostly stay apart
    assert fit_vocab(ids, vocab) == out  # the same mapping every time
    assert fit_vocab([5, 40000], None) == [5, 40000]  # no vocabulary: as they are...
    with pytest.raises(StreamError, match="synthetic"):
        fit_vocab(ids, None)  # ...but never an id no model has


def test_a_run_with_vocab_size_sends_only_ids_the_model_has():
    with FakeStreamServer() as srv:
        run_load([Request(0, 0.0, [3, 1 << 24, 40000], 1)], LoadConfig(url=srv.url, vocab_size=32000))
        (seen,) = srv.seen
    assert seen.body["input_ids"][0] == 3 and all(0 <= t < 32000 for t in seen.body["input_ids"])


def test_synthetic_ids_without_a_vocabulary_are_not_sent():
    with FakeStreamServer() as srv:
        res = run_load([Request(0, 0.0, [3, 1 << 24], 1), Request(1, 0.0, [3, 4], 1)], LoadConfig(url=srv.url))
        assert [s.request_id for s in srv.seen] == [1]
    assert res.results[0].status == "error" and "vocab_size" in (res.results[0].error or "")
    assert res.results[1].status == "ok"


def test_a_bad_line_in_a_lazily_read_trace_stops_sending_and_keeps_what_was_measured(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, reqs([0.0, 0.05]))
    with path.open("a") as fh:
        fh.write('{"request_id": 9, "arrival_s": 0.1, "prompt": [], "output_len": 1}\n')
    with FakeStreamServer() as srv:
        res = run_load(read_trace(path), LoadConfig(url=srv.url))
    assert res.stop_reason == "input_error" and "line 3" in str(res.input_error)
    assert [r.status for r in res.results] == ["ok", "ok"]


def test_only_loopback_urls_unless_allowed():
    for ok in ("http://127.0.0.1:30000", "http://127.3.4.5:1/", "http://localhost:8000", "http://[::1]:30000"):
        assert check_url(ok) == ok.rstrip("/")
    for bad in ("http://10.0.0.1:30000", "http://example.com", "http://[2001:db8::1]:80"):
        with pytest.raises(RemoteRefused):
            check_url(bad)
        assert check_url(bad, allow_remote=True)
        with pytest.raises(RemoteRefused):
            run_load(reqs([0.0]), LoadConfig(url=bad))
    with pytest.raises(ValueError, match="expected http"):
        check_url("ftp://127.0.0.1/")


def test_same_seed_same_request_stream():
    def stream(seed: int, rate: float | None = None) -> list[tuple[float, list[int], int]]:
        base = make_requests("gsp:num_groups=4", 20.0, num_requests=30, seed=seed)
        return [(r.arrival_s, list(r.prompt), r.output_len) for r in retime(base, rate, seed)]

    assert stream(3) == stream(3) and stream(3) != stream(4)
    assert stream(3, rate=50.0) == stream(3, rate=50.0)
    assert [t for t, *_ in stream(3, rate=50.0)] != [t for t, *_ in stream(3)]


def test_retime_starts_at_zero_keeps_gaps_and_scales():
    base = reqs([10.0, 10.5, 12.0])
    assert [r.arrival_s for r in retime(base)] == [0.0, 0.5, 2.0]
    assert [r.arrival_s for r in retime(base, time_scale=0.5)] == [0.0, 0.25, 1.0]
    assert [r.request_id for r in retime(base, rate=5.0, seed=1)] == [0, 1, 2]


def test_records_have_every_field_of_the_simulators_records():
    with FakeStreamServer() as srv:
        res = run_load(reqs([0.0]), LoadConfig(url=srv.url))
    rec = json.loads(res.records()[0].model_dump_json(exclude_none=True))
    sim_fields = {"request_id", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "cached_tokens",
                  "output_tokens", "slo_class", "ttft_s"}  # retractions: unknown to a client, left out
    assert sim_fields <= rec.keys() and rec["status"] == "ok"
    assert rec["ttft_s"] == pytest.approx(rec["first_token_s"] - rec["arrival_s"])
