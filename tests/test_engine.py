"""The embedded engine: conservation, latency bounds, determinism, TBT accounting, batching rules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, PolicySpec, RADSpec, SarathiSpec, SLAISpec, parse_policy
from schedctl.sim.engine import EngineConfig, SimEngine
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, simulate
from schedctl.sim.step_time import StepBatch
from schedctl.tokens import IdAllocator
from schedctl.workloads.registry import make_requests
from schedctl.workloads.types import Request

HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
MODEL = HW.step_model()


def engine(policy: PolicySpec, kv_tokens: int = 400_000, **cfg: object) -> SimEngine:
    return SimEngine(EngineConfig(**cfg), MODEL, kv_tokens, policy)  # type: ignore[arg-type]


def gsp(rate: float, n: int, seed: int = 1, **params: int) -> list[Request]:
    spec = "gsp:" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "gsp"
    return list(make_requests(spec, rate, "poisson", num_requests=n, seed=seed))


def run(requests: list[Request], policy: PolicySpec, kv_tokens: int = 400_000, **cfg: object) -> SimEngine:
    eng = engine(policy, kv_tokens, **cfg)
    eng.add_requests(requests)
    eng.run()
    return eng


@pytest.mark.parametrize("policy", [FCFSSpec(), LPMSpec(), KLPMSpec(k=3)])
@pytest.mark.parametrize("kv_tokens", [400_000, 30_000])  # roomy, and tight enough to force retractions
def test_every_request_finishes_exactly_once(policy: PolicySpec, kv_tokens: int):
    reqs = gsp(40.0, 600, num_groups=16, system_prompt_len=1024)
    eng = run(reqs, policy, kv_tokens)
    ids = eng.completed.column("request_id")
    assert sorted(ids.tolist()) == [r.request_id for r in reqs]
    assert eng.done() and not eng.aborted
    if kv_tokens == 30_000:
        assert eng.retractions > 0, "the tight cache should have forced retractions"
    out = eng.completed.column("output_tokens")
    assert out.tolist() == [next(r.output_len for r in reqs if r.request_id == i) for i in ids]
    assert eng.cache.inflight_tokens == 0 and eng.cache.evictable_tokens == eng.cache.tree_tokens  # all released


def test_ttft_is_at_least_the_time_to_prefill_the_uncached_tokens_alone():
    reqs = gsp(30.0, 400, num_groups=8, system_prompt_len=2048)
    eng = run(reqs, KLPMSpec(k=2), record_token_times=True)
    for row in eng.completed.rows():
        uncached = row.prompt_tokens - row.cached_tokens
        assert uncached >= 1  # the last prompt token is always recomputed
        alone = MODEL.step_s(StepBatch.of([(uncached, row.cached_tokens)]))
        assert row.ttft_s >= alone - 1e-12
        assert row.finish_s >= row.first_token_s >= row.arrival_s


def test_same_seed_gives_an_identical_run():
    a = run(gsp(35.0, 500, seed=7), LPMSpec())
    b = run(gsp(35.0, 500, seed=7), LPMSpec())
    c = run(gsp(35.0, 500, seed=8), LPMSpec())
    for col in ("request_id", "arrival_s", "first_token_s", "finish_s", "cached_tokens"):
        assert np.array_equal(a.completed.column(col), b.completed.column(col))
    assert np.array_equal(a.tbt.counts, b.tbt.counts) and a.tbt.total_s == b.tbt.total_s
    assert not np.array_equal(a.completed.column("finish_s"), c.completed.column("finish_s"))


@pytest.mark.parametrize("kv_tokens", [400_000, 30_000])
def test_tbt_histogram_agrees_with_every_token_time(kv_tokens: int):
    eng = run(gsp(40.0, 300, num_groups=16, system_prompt_len=1024), FCFSSpec(), kv_tokens, record_token_times=True)
    gaps: list[float] = []
    for row in eng.completed.rows():
        times = row.token_times_s or []
        assert len(times) == row.output_tokens  # one time per token, none lost or doubled by retractions
        assert times[0] == row.first_token_s and times[-1] == pytest.approx(row.finish_s, abs=1e-9)
        own = row.tbt_s()
        assert sum(own) == pytest.approx(row.finish_s - row.first_token_s)  # TBT adds up to the decode time
        gaps += own
    assert eng.tbt.total_weight == len(gaps)
    assert eng.tbt.total_s == pytest.approx(sum(gaps), rel=1e-9)
    for q in (0.5, 0.99):
        assert eng.tbt.quantile(q) == pytest.approx(float(np.quantile(gaps, q)), rel=0.02)


@pytest.mark.parametrize("policy", [FCFSSpec(), KLPMSpec(k=2), SarathiSpec(), SLAISpec(), RADSpec()])
@pytest.mark.parametrize(("kv_tokens", "decay"), [(400_000, 0.001), (24_000, 0.001), (24_000, 0.05)])
def test_decode_runs_advanced_in_bulk_equal_the_step_by_step_loop(policy: PolicySpec, kv_tokens: int, decay: float):
    # A tight cache retracts; a fast decay of the reserve share makes waiting requests fit in the middle of a run.
    reqs = gsp(40.0, 300, num_groups=16, system_prompt_len=1024)
    bulk = run(reqs, policy, kv_tokens, token_ratio_decay_per_step=decay)
    steps = run(reqs, policy, kv_tokens, token_ratio_decay_per_step=decay, max_decode_run_steps=1)
    assert bulk.decode_steps == steps.decode_steps and bulk.retractions == steps.retractions
    for col in ("request_id", "cached_tokens", "retractions"):
        assert np.array_equal(bulk.completed.column(col), steps.completed.column(col))
    for col in ("first_token_s", "finish_s"):
        assert np.allclose(bulk.completed.column(col), steps.completed.column(col), rtol=0, atol=1e-9)
    assert bulk.tbt.total_s == pytest.approx(steps.tbt.total_s, rel=1e-9)


def test_a_prompt_longer_than_the_budget_is_chunked_over_rounds():
    ids = IdAllocator()
    req = Request(0, 0.0, ids.take(2000), 4)
    eng = run([req], FCFSSpec(), chunked_prefill_tokens=512)
    assert eng.prefill_steps == 4  # 512 + 512 + 512 + 464
    chunks = [(512, 0), (512, 512), (512, 1024), (464, 1536)]
    assert eng.completed.row(0).ttft_s == pytest.approx(sum(MODEL.step_s(StepBatch.of([c])) for c in chunks))


def test_requests_of_one_round_sharing_an_uncached_prefix_compute_it_once():
    ids = IdAllocator()
    shared = ids.take(1000)
    reqs = [Request(i, 0.0, shared + ids.take(50), 8) for i in range(3)]
    eng = run(reqs, FCFSSpec())
    assert eng.prefill_steps == 1
    assert sorted(eng.completed.column("cached_tokens").tolist()) == [0, 1000, 1000]
    expected = MODEL.step_s(StepBatch.of([(1050, 0), (50, 1000), (50, 1000)]))
    assert eng.completed.row(0).ttft_s == pytest.approx(expected)


def sequential_max_ttft(reqs: list[Request], order: tuple[int, ...]) -> float:
    """The k-LPM paper's model, as a reference: one query at a time, its service is its prefill, no reuse."""
    t, worst = 0.0, 0.0
    for i in order:
        r = reqs[i]
        t = max(t, r.arrival_s) + MODEL.step_s(StepBatch.of([(len(r.prompt), 0)]))
        worst = max(worst, t - r.arrival_s)
    return worst


@pytest.mark.parametrize("seed", range(8))
def test_without_shared_prefixes_one_at_a_time_fcfs_minimises_the_maximum_ttft(seed: int):
    rng = np.random.default_rng(seed)
    ids = IdAllocator()
    arrivals = np.cumsum(rng.exponential(0.05, 6))
    # One output token each: a query's service is its prefill, as in the paper's model. (With decode tails FCFS is
    # not optimal for TTFT: a long decode delays the next first token however short that prompt is.)
    reqs = [Request(i, float(a), ids.take(int(rng.integers(50, 3000))), 1) for i, a in enumerate(arrivals)]
    eng = run(reqs, FCFSSpec(), max_running_requests=1, chunked_prefill_tokens=4096)
    got = float(eng.completed.ttft_s().max())
    assert got == pytest.approx(sequential_max_ttft(reqs, tuple(range(len(reqs)))), rel=1e-9)
    best = min(sequential_max_ttft(reqs, p) for p in itertools.permutations(range(len(reqs))))
    assert got <= best * (1 + 1e-9)


def test_policy_change_mid_run_takes_effect_and_loses_nothing():
    reqs = gsp(60.0, 800, num_groups=128, system_prompt_len=2048)
    eng = engine(FCFSSpec(), 200_000)
    eng.add_requests(reqs)
    eng.run(until_s=5.0)
    assert eng.queue_len > 0
    eng.set_policy(parse_policy("lpm"))
    eng.run()
    assert len(eng.completed) == len(reqs)


def test_a_request_that_can_never_fit_is_aborted_not_fatal():
    ids = IdAllocator()
    reqs = [Request(0, 0.0, ids.take(5000), 4), Request(1, 0.1, ids.take(100), 4)]
    eng = run(reqs, FCFSSpec(), kv_tokens=1000)
    assert eng.aborted == [0]
    assert eng.completed.column("request_id").tolist() == [1]


@pytest.mark.parametrize("kv_tokens", [400_000, 30_000])  # the tight cache retracts: admission re-checks matter
def test_run_until_stops_at_the_horizon_and_resumes_to_the_same_result(kv_tokens: int):
    reqs = gsp(40.0, 400, num_groups=16, system_prompt_len=1024)
    whole = run(reqs, LPMSpec(), kv_tokens)
    if kv_tokens == 30_000:
        assert whole.retractions > 0
    parts = engine(LPMSpec(), kv_tokens)
    parts.add_requests(reqs)
    t = 0.0
    while not parts.done():
        t += 0.5
        parts.run(until_s=t)
        assert parts.now_s < t + 1.0  # never far past the horizon (a step may straddle it)
    for col in ("request_id", "cached_tokens", "retractions"):
        assert np.array_equal(whole.completed.column(col), parts.completed.column(col))
    assert np.allclose(whole.completed.column("finish_s"), parts.completed.column("finish_s"), rtol=0, atol=1e-9)


def test_summary_of_a_run():
    _eng, s = simulate(gsp(20.0, 1000), FCFSSpec(), HW, rate=20.0, seed=1)
    assert s.requests == 1000 and s.unfinished == 0 and s.aborted == 0
    assert 0 < s.ttft_p50_s <= s.ttft_p90_s <= s.ttft_p99_s <= s.ttft_max_s
    assert 0 < s.tbt_p50_s <= s.tbt_p99_s
    assert 0.5 < s.cache_hit_rate < 1 and 0.8 * 20.0 < s.throughput_rps < 1.05 * 20.0
    assert not math.isnan(s.ttft_mean_s)


def test_kv_utilization_counts_requests_in_flight_not_evictable_cached_prefixes():
    eng = engine(FCFSSpec(), 200_000)
    eng.add_requests(gsp(40.0, 200, num_groups=4, system_prompt_len=1024))
    eng.run(until_s=2.0)
    assert eng.running > 0
    held = eng.cache.capacity_tokens - eng.cache.available_tokens
    assert eng.kv_utilization == pytest.approx(held / eng.cache.capacity_tokens) and held > 0
    eng.run()
    assert eng.cache.tree_tokens > 0  # finished requests stay cached ...
    assert eng.kv_utilization == 0.0  # ... but that memory is free to a new request (SGLang's token_usage)
