"""The token-budget hybrid batch mode (sarathi, slai, rad): budgets, decode selection, orders, TBT, bulk runs.

Properties are checked from the iteration records (``trace_iterations``) and the per-token times against facts
recomputed here (deadlines from token times and classes, prompt lengths), not against the engine's own numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from schedctl.policies import slai
from schedctl.policies.spec import LPMSpec, PolicySpec, SarathiSpec, SLAISpec, parse_policy
from schedctl.sim.engine import EngineConfig, PolicyFamilyError, SimEngine
from schedctl.sim.hybrid import HybridBatcher, IterationRecord
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.sim.step_time import StepBatch
from schedctl.tokens import IdAllocator
from schedctl.workloads.registry import make_requests
from schedctl.workloads.types import Request

HW = Hardware(gpu=load_gpu("rtx-6000-ada"), model=load_model("mistral-7b"))
MODEL = HW.step_model()
POLICIES = [
    parse_policy("sarathi"),
    parse_policy("slai"),
    parse_policy("slai:token_budget=256,decode_cap=40,max_running_requests=96,prefill_order=fcfs"),
    parse_policy("rad"),
    parse_policy("rad:prefill_batches_per_cycle=3,tile_tokens=48,token_budget=300"),
]
IDS = [p.kind + ("+knobs" if i in (2, 4) else "") for i, p in enumerate(POLICIES)]


def sharegpt(rate: float, n: int, seed: int = 1, strict: float = 0.3) -> list[Request]:
    return list(make_requests(f"sharegpt:strict_fraction={strict}", rate, "poisson", num_requests=n, seed=seed))


def gsp(rate: float, n: int, seed: int = 1) -> list[Request]:
    return list(make_requests("gsp:num_groups=16,system_prompt_len=1024", rate, "poisson", num_requests=n, seed=seed))


def engine(policy: PolicySpec, kv_tokens: int = 200_000, **cfg: object) -> SimEngine:
    return SimEngine(EngineConfig(**cfg), MODEL, kv_tokens, policy)


def run(reqs: list[Request], policy: PolicySpec, kv_tokens: int = 200_000, **cfg: object) -> SimEngine:
    eng = engine(policy, kv_tokens, **cfg)
    eng.add_requests(reqs)
    eng.run()
    return eng


def records(eng: SimEngine) -> list[IterationRecord]:
    assert isinstance(eng._batcher, HybridBatcher) and eng._batcher.iterations is not None
    return eng._batcher.iterations


@pytest.mark.parametrize("policy", POLICIES, ids=IDS)
@pytest.mark.parametrize("kv_tokens", [200_000, 8_000])  # roomy, and tight enough to force retractions
def test_every_request_finishes_exactly_once(policy: PolicySpec, kv_tokens: int):
    reqs = sharegpt(14.0, 400)
    eng = run(reqs, policy, kv_tokens)
    assert sorted(eng.completed.column("request_id").tolist()) == [r.request_id for r in reqs]
    assert eng.done() and not eng.aborted
    if kv_tokens == 8_000:
        assert eng.retractions > 0, "the tight cache should have forced retractions"
    assert eng.cache.inflight_tokens == 0 and eng.cache.evictable_tokens == eng.cache.tree_tokens  # all released
    assert eng.running_set.ctx_tokens == 0 and eng.running_set.remaining_tokens == 0


@pytest.mark.parametrize("policy", POLICIES, ids=IDS)
@pytest.mark.parametrize("kv_tokens", [200_000, 8_000])
def test_no_iteration_exceeds_its_token_budget(policy: PolicySpec, kv_tokens: int):
    eng = run(sharegpt(16.0, 400), policy, kv_tokens, trace_iterations=True)
    recs = records(eng)
    budget = policy.token_budget  # type: ignore[union-attr]
    full = [r for r in recs if r.tokens == r.budget_tokens]
    assert full, "the load should have filled some iterations to the budget"
    for r in recs:
        assert r.budget_tokens <= budget
        assert 0 < r.tokens <= r.budget_tokens, r
    assert sum(r.steps for r in recs) == eng.prefill_steps + eng.decode_steps


@pytest.mark.parametrize("kv_tokens", [200_000, 8_000])
def test_sarathi_never_leaves_a_running_decode_out(kv_tokens: int):
    eng = run(sharegpt(16.0, 400), SarathiSpec(), kv_tokens, trace_iterations=True)
    recs = records(eng)
    assert any(r.prefill and r.decode_ids for r in recs)  # hybrid batches happened
    for r in recs:
        assert sorted(r.decode_ids) == sorted(i for i, _t, _c in r.decoding), r


def _mean_batch_before(recs: list[IterationRecord], i: int) -> float:
    steps = sum(r.steps for r in recs[:i])
    return sum(r.end_s - r.start_s for r in recs[:i]) / steps if steps else 0.0


@pytest.mark.parametrize("policy", [SLAISpec(), parse_policy("slai:token_budget=256,decode_cap=40,tbt_slack_s=0.02")])
def test_slai_schedules_every_critical_decode_when_budget_allows(policy: SLAISpec):
    eng = run(sharegpt(18.0, 500, strict=0.3), policy, trace_iterations=True)
    recs = records(eng)
    tbt = {c: slai.tbt_slo_s(policy, c) for c in slai.TBT_CLASSES}
    limit = min(policy.decode_cap, policy.token_budget)
    seen_critical = seen_left_out = 0
    for i, r in enumerate(recs):
        mean_s = _mean_batch_before(recs, i)
        assert r.mean_batch_s == pytest.approx(mean_s, rel=1e-9, abs=1e-12)
        theta = policy.theta_high if r.kv_utilization >= policy.memory_limit else policy.theta_low
        deadline = {rid: last + tbt[cls] for rid, last, cls in r.decoding}
        critical = {rid for rid, d in deadline.items() if d - policy.tbt_slack_s - theta * mean_s <= r.start_s}
        got = set(r.decode_ids)
        if len(critical) <= limit:
            assert critical <= got, f"iteration {i}: critical decodes left out: {critical - got}"
        else:
            assert len(critical & got) == limit
        left_out = set(deadline) - got
        seen_critical += len(critical)
        seen_left_out += len(left_out)
        if left_out and got - critical:  # leftover budget goes to the non-critical decodes in deadline order
            assert max(deadline[j] for j in got - critical) <= min(deadline[j] for j in left_out)
    assert seen_critical > 0 and seen_left_out > 0, "the load should make decodes critical and leave some out"


def _prompt_len(reqs: list[Request]) -> dict[int, int]:
    return {r.request_id: len(r.prompt) for r in reqs}


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        (SLAISpec(), lambda r: (len(r.prompt), r.request_id)),
        (parse_policy("slai:strict_first=true"), lambda r: (r.slo_class != "strict", len(r.prompt), r.request_id)),
        (parse_policy("slai:prefill_order=fcfs"), lambda r: (r.request_id,)),
        (SarathiSpec(), lambda r: (r.request_id,)),
    ],
    ids=["spf", "spf-strict-first", "slai-fcfs", "sarathi-fcfs"],
)
def test_new_prefills_are_admitted_in_the_policys_order(policy: PolicySpec, key):
    reqs = sharegpt(20.0, 500, strict=0.3)
    by_id = {r.request_id: r for r in reqs}
    eng = run(reqs, policy, trace_iterations=True)
    assert eng.retractions == 0  # (a retracted request would rightly go first)
    orders_checked = 0
    for r in records(eng):
        keys = [key(by_id[i]) for i in r.admitted_ids]
        assert keys == sorted(keys), r
        if r.admitted_ids and r.waiting_head_id is not None:
            assert max(keys) <= key(by_id[r.waiting_head_id])  # nothing left waiting should have gone first
            orders_checked += 1
    assert orders_checked > 20, "the load should leave requests waiting behind admitted ones"


def test_theta_switches_at_the_memory_limit():
    policy = parse_policy("slai:memory_limit=0.5,theta_low=2,theta_high=7")
    eng = run(sharegpt(18.0, 400), policy, kv_tokens=16_000, trace_iterations=True)
    recs = [r for r in records(eng) if r.steps == 1]
    for r in recs:
        assert r.theta == (7.0 if r.kv_utilization >= 0.5 else 2.0), r
    assert {r.theta for r in recs} == {2.0, 7.0}, "the run should cross the memory limit both ways"


@pytest.mark.parametrize("policy", POLICIES, ids=IDS)
@pytest.mark.parametrize("kv_tokens", [200_000, 8_000])
def test_tbt_samples_add_up_to_each_requests_decode_time(policy: PolicySpec, kv_tokens: int):
    eng = run(sharegpt(16.0, 300), policy, kv_tokens, record_token_times=True, tbt_by_class=True)
    gaps: dict[str, list[float]] = {}
    for row in eng.completed.rows():
        times = row.token_times_s or []
        assert len(times) == row.output_tokens  # one time per token, none lost or doubled by retractions
        assert times[0] == row.first_token_s and times[-1] == pytest.approx(row.finish_s, abs=1e-9)
        own = row.tbt_s()
        assert all(g > 0 for g in own)
        assert sum(own) == pytest.approx(row.finish_s - row.first_token_s)  # TBT adds up to the decode time
        gaps.setdefault(row.slo_class, []).extend(own)
    every = [g for own in gaps.values() for g in own]
    assert eng.tbt.total_weight == len(every)
    assert eng.tbt.total_s == pytest.approx(sum(every), rel=1e-9)
    assert eng.tbt.quantile(0.99) == pytest.approx(float(np.quantile(every, 0.99)), rel=0.02)
    assert eng.tbt_classes is not None and set(eng.tbt_classes) == set(gaps)
    for cls, own in gaps.items():
        assert eng.tbt_classes[cls].total_weight == len(own)
        assert eng.tbt_classes[cls].total_s == pytest.approx(sum(own), rel=1e-9)


@pytest.mark.parametrize("policy", POLICIES, ids=IDS)
@pytest.mark.parametrize(
    ("workload", "kv_tokens", "decay"),
    [("sharegpt", 200_000, 0.001), ("sharegpt", 8_000, 0.001), ("gsp", 30_000, 0.001), ("gsp", 30_000, 0.05)],
)
def test_decode_runs_advanced_in_bulk_equal_the_step_by_step_loop(
    policy: PolicySpec, workload: str, kv_tokens: int, decay: float
):
    # A tight cache retracts; a fast decay of the reserve share makes waiting requests fit in the middle of a run.
    reqs = sharegpt(12.0, 300) if workload == "sharegpt" else gsp(10.0, 300)
    bulk = run(reqs, policy, kv_tokens, token_ratio_decay_per_step=decay)
    steps = run(reqs, policy, kv_tokens, token_ratio_decay_per_step=decay, max_decode_run_steps=1)
    assert (bulk.decode_steps, bulk.prefill_steps, bulk.retractions) == (
        steps.decode_steps, steps.prefill_steps, steps.retractions)
    for col in ("request_id", "cached_tokens", "retractions"):
        assert np.array_equal(bulk.completed.column(col), steps.completed.column(col))
    for col in ("first_token_s", "finish_s"):
        assert np.allclose(bulk.completed.column(col), steps.completed.column(col), rtol=0, atol=1e-9)
    assert bulk.tbt.total_s == pytest.approx(steps.tbt.total_s, rel=1e-9)
    assert bulk.tbt.total_weight == steps.tbt.total_weight


def test_bulk_runs_take_few_events():
    eng = run(sharegpt(4.0, 300), SLAISpec(), trace_iterations=True)
    recs = records(eng)
    assert sum(r.steps for r in recs) > 5 * len(recs)  # most decode iterations were advanced in bulk


def test_a_prefills_cost_and_budget_count_only_its_uncached_tokens():
    ids = IdAllocator()
    shared = ids.take(1000)
    first = Request(0, 0.0, shared + ids.take(100), 2)
    second = Request(1, 5.0, shared + ids.take(100), 2)  # arrives after the first has finished
    eng = run([first, second], SarathiSpec(token_budget=512, max_running_requests=64), trace_iterations=True)
    assert eng.completed.column("cached_tokens").tolist() == [0, 1000]
    prefills = [r.prefill for r in records(eng) if r.prefill]
    assert prefills == [((0, 512, 0),), ((0, 512, 512),), ((0, 76, 1024),), ((1, 100, 1000),)]
    expected = MODEL.step_s(StepBatch.of([(100, 1000)]))
    assert eng.completed.row(1).ttft_s == pytest.approx(expected)


def test_slai_retune_takes_effect_at_the_next_iteration():
    policy = SLAISpec()
    eng = engine(policy, trace_iterations=True)
    eng.add_requests(sharegpt(18.0, 400))
    eng.run(until_s=8.0)
    assert eng.running > 0
    before = len(records(eng))
    eng.set_policy(slai.with_theta(policy, 0.5))
    eng.run(until_s=eng.now_s + 1e-9)  # exactly one more iteration or bulk run
    new = records(eng)[before]
    assert new.theta in (0.5, 5.5)  # Θ low (or high, moved by the same amount)
    eng.run()
    assert len(eng.completed) == 400


def test_a_switch_between_families_is_refused_while_requests_are_in_flight():
    eng = engine(SarathiSpec())
    eng.set_policy(LPMSpec())  # nothing in flight: allowed
    eng.set_policy(SLAISpec())
    eng.add_requests(sharegpt(10.0, 100))
    eng.run(until_s=3.0)
    eng.set_policy(parse_policy("rad"))  # within the family: allowed mid-run
    with pytest.raises(PolicyFamilyError, match="cannot switch from rad to lpm while requests are in flight"):
        eng.set_policy(LPMSpec())
    eng.run()
    assert len(eng.completed) == 100


def test_slai_refuses_a_request_of_an_unknown_class():
    ids = IdAllocator()
    eng = engine(SLAISpec())
    eng.add_requests([Request(7, 0.0, ids.take(10), 3, slo_class="gold")])
    with pytest.raises(ValueError, match="request 7: slo_class 'gold' is not a TBT class SLAI knows"):
        eng.run()


def test_a_long_prompt_is_chunked_over_iterations_and_its_ttft_is_the_sum():
    ids = IdAllocator()
    eng = run([Request(0, 0.0, ids.take(2000), 4)], SarathiSpec(token_budget=512, max_running_requests=8))
    chunks = [(512, 0), (512, 512), (512, 1024), (464, 1536)]
    assert eng.prefill_steps == 4
    assert eng.completed.row(0).ttft_s == pytest.approx(sum(MODEL.step_s(StepBatch.of([c])) for c in chunks))


def test_a_request_that_can_never_fit_is_aborted_not_fatal():
    ids = IdAllocator()
    reqs = [Request(0, 0.0, ids.take(5000), 4), Request(1, 0.1, ids.take(100), 4)]
    eng = run(reqs, SLAISpec(), kv_tokens=1000)
    assert eng.aborted == [0]
    assert eng.completed.column("request_id").tolist() == [1]
    assert not math.isnan(eng.completed.row(0).ttft_s)
