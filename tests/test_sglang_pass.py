"""The ``sglang_lpm`` engine option: SGLang 0.5.23's own pass order (sim/sglang_pass.py) against the idealised
k-LPM queue: LPM off above 128 waiting, one request per shared cold prefix first in a pass."""

from __future__ import annotations

import pytest

from schedctl.policies.klpm import KLPMQueue
from schedctl.policies.spec import FCFSSpec, KLPMSpec, LPMSpec, parse_policy
from schedctl.sim.engine import EngineConfig, SimEngine, sglang_engine_config
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.radix_cache import RadixKVCache
from schedctl.sim.run import Hardware
from schedctl.sim.sglang_pass import SGLangPassQueue
from schedctl.sim.step_time import StepBatch
from schedctl.workloads.types import Request

SGLANG_LPM = KLPMSpec(k=None, sglang=True)

MODEL = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b")).step_model()
HOT = tuple(range(1000, 1200))  # a cached 200-token prefix


def cold(i: int, n: int = 100) -> tuple[int, ...]:
    return tuple(range(10_000 * (i + 1), 10_000 * (i + 1) + n))


def cache_with_hot() -> RadixKVCache:
    cache = RadixKVCache(1_000_000)
    cache.insert(HOT)
    return cache


@pytest.mark.parametrize("waiting", [128, 129])
def test_lpm_turns_fcfs_above_128_waiting_under_sglang_lpm_only(waiting: int) -> None:
    """The request that matches the cache arrives last: LPM serves it first, unless more than 128 wait."""
    cache = cache_with_hot()
    prompts = [cold(i) for i in range(waiting - 1)] + [(*HOT, 7)]
    sglang: SGLangPassQueue[int] = SGLangPassQueue(SGLANG_LPM, oracle=cache)
    ours: KLPMQueue[int] = KLPMQueue(None, oracle=cache)
    for seq, p in enumerate(prompts):
        sglang.push(seq, seq, tokens=p)
        ours.push(seq, seq, tokens=p)
    sglang.begin_pass()
    assert ours.peek() == waiting - 1  # ours: LPM at any length
    assert sglang.peek() == (waiting - 1 if waiting <= 128 else 0)  # SGLang: FCFS above 128
    assert sglang.sorted_passes == (1 if waiting <= 128 else 0)


def test_above_128_the_list_keeps_the_order_of_the_last_sorted_pass() -> None:
    cache = cache_with_hot()
    q: SGLangPassQueue[int] = SGLangPassQueue(SGLANG_LPM, oracle=cache)
    for seq in range(120):
        q.push(seq, seq, tokens=cold(seq))
    q.push(120, 120, tokens=(*HOT, 1))
    q.begin_pass()  # 121 waiting: sorted, the hot one first
    for seq in range(121, 140):
        q.push(seq, seq, tokens=(*HOT, seq))  # more hot ones arrive: 140 waiting, not sorted
    q.begin_pass()
    assert [q.pop() for _ in range(3)] == [120, 0, 1]
    assert q.items()[-1] == 139  # the new hot arrivals stay behind the cold ones


def test_one_request_per_shared_cold_prefix_goes_first_in_a_pass() -> None:
    cache = cache_with_hot()
    shared = cold(0, 64)
    prompts = {
        "a1": shared + cold(1, 36), "a2": shared + cold(2, 36),  # share 64 cold tokens
        "b": cold(3),
        "c1": cold(4, 16) + cold(5, 84), "c2": cold(4, 16) + cold(6, 84),  # share 16 cold tokens: under 32
        "h1": HOT[:40] + cold(7, 60), "h2": HOT[:40] + cold(8, 60),  # 40 cached tokens (> 32): not checked
    }
    q: SGLangPassQueue[str] = SGLangPassQueue(SGLANG_LPM, oracle=cache)
    ours: KLPMQueue[str] = KLPMQueue(None, oracle=cache)
    for seq, (name, p) in enumerate(prompts.items()):
        q.push(name, seq, tokens=p)
        ours.push(name, seq, tokens=p)
    q.begin_pass()
    assert q.items() == ["h1", "h2", "a1", "b", "c1", "c2", "a2"]
    assert q.deprioritised == 1
    assert [ours.pop() for _ in range(len(prompts))] == ["h1", "h2", "a1", "a2", "b", "c1", "c2"]
    q.begin_pass()  # deprioritisation lasts one pass: recomputed from the list as it is
    assert q.items()[-1] == "a2" and q.deprioritised == 2


def burst() -> list[Request]:
    shared = cold(0, 64)
    prompts = [shared + cold(1, 36), shared + cold(2, 36), cold(3)]
    return [Request(request_id=i, arrival_s=0.0, prompt=p, output_len=4) for i, p in enumerate(prompts)]


@pytest.mark.parametrize("sglang_lpm", [False, True])
def test_in_the_engine_a_cold_shared_prefix_waits_for_the_next_pass(sglang_lpm: bool) -> None:
    """A 200-token prefill budget: the idealised engine admits both sharers in one round (the second computes 36
    tokens); SGLang's order admits the unrelated request first and the second sharer in the next pass."""
    eng = SimEngine(EngineConfig(chunked_prefill_tokens=200, sglang_lpm=sglang_lpm), MODEL, 100_000, LPMSpec())
    eng.add_requests(burst())
    eng.run()
    first = {eng.completed.row(i).request_id: eng.completed.row(i).first_token_s for i in range(3)}
    if sglang_lpm:
        assert first[2] <= first[0] < first[1]
    else:
        assert first[0] == first[1] < first[2]


def test_switching_policy_moves_the_waiting_requests_between_queues() -> None:
    eng = SimEngine(EngineConfig(sglang_lpm=True, max_running_requests=1), MODEL, 100_000, FCFSSpec())
    eng.add_requests([Request(request_id=i, arrival_s=0.0, prompt=cold(i), output_len=50) for i in range(6)])
    eng.run(until_s=0.05)
    waiting = eng.queue_len
    assert waiting > 0
    eng.set_policy(parse_policy("klpm:2"))  # not SGLang's own: the k-LPM queue takes the waiting requests
    assert eng.queue_len == waiting
    eng.set_policy(LPMSpec())
    assert eng.queue_len == waiting
    eng.run()
    assert sorted(eng.completed.row(i).request_id for i in range(6)) == list(range(6))


def test_sglang_reserve_share_starts_high_decays_per_decode_step_and_resets_when_idle() -> None:
    cfg = sglang_engine_config(schedule_conservativeness=1.0)
    assert (cfg.init_new_token_ratio, cfg.new_token_ratio) == pytest.approx((0.7, 0.098))
    assert sglang_engine_config(schedule_conservativeness=0.5).init_new_token_ratio == pytest.approx(0.35)
    eng = SimEngine(cfg, MODEL, 100_000, LPMSpec())
    assert eng.new_token_ratio == pytest.approx(0.7)
    eng.add_requests([Request(request_id=0, arrival_s=0.0, prompt=cold(0), output_len=301),
                      Request(request_id=1, arrival_s=100.0, prompt=cold(1), output_len=2)])
    eng.run(until_s=50.0)  # 300 decode steps done, then idle until the next arrival
    assert eng.decode_steps == 300
    assert eng.new_token_ratio == pytest.approx(0.7)  # reset when the engine fell idle
    eng2 = SimEngine(cfg, MODEL, 100_000, LPMSpec())
    eng2.add_requests([Request(request_id=0, arrival_s=0.0, prompt=cold(0), output_len=301)])
    eng2.run(until_s=eng.completed.row(0).finish_s - 1e-9)  # just before it finishes: 299 steps decayed
    assert eng2.new_token_ratio == pytest.approx(0.7 - eng2.decode_steps * (0.7 - 0.098) / 600)
    assert eng2.decode_steps > 250


@pytest.mark.parametrize("sglang_lpm", [False, True])
def test_requests_of_one_batch_do_not_share_an_uncached_prefix_under_sglang(sglang_lpm: bool) -> None:
    """Budget for both sharers in one pass: SGLang computes their common cold prefix twice (each is matched
    against the tree as it was before the batch); the idealised engine computes it once."""
    eng = SimEngine(EngineConfig(chunked_prefill_tokens=1000, sglang_lpm=sglang_lpm), MODEL, 100_000, LPMSpec())
    eng.add_requests(burst()[:2])
    eng.run()
    rows = {eng.completed.row(i).request_id: eng.completed.row(i) for i in range(2)}
    assert rows[0].first_token_s == rows[1].first_token_s  # one prefill batch either way
    assert rows[1].cached_tokens == (0 if sglang_lpm else 64)
    chunks = [(100, 0), (100, 0)] if sglang_lpm else [(100, 0), (36, 64)]
    assert rows[0].first_token_s == pytest.approx(MODEL.step_s(StepBatch.of(chunks)))
    assert eng.cache.hit_rate == pytest.approx(0.0 if sglang_lpm else 64 / 200)


def plugin_queue(k: int | None, prompts: dict[str, tuple[int, ...]]) -> SGLangPassQueue[str]:
    q: SGLangPassQueue[str] = SGLangPassQueue(KLPMSpec(k=k), oracle=cache_with_hot(), plugin=True)
    for seq, (name, p) in enumerate(prompts.items()):
        q.push(name, seq, tokens=p)
    return q


PLUGIN_PROMPTS = {"a1": cold(1, 64) + cold(2, 36), "a2": cold(1, 64) + cold(3, 36), "c0": cold(0),
                  "h1": (*HOT, 1), "h2": (*HOT, 2)}


@pytest.mark.parametrize(("k", "order"), [
    (2, ["a1", "h1", "c0", "h2", "a2"]),  # oldest, longest match, oldest, ...; the cold sharer a2 last
    (None, ["h1", "h2", "a1", "c0", "a2"]),
    (1, ["a1", "a2", "c0", "h1", "h2"]),  # the plugin's fcfs is by age, without deprioritisation
])
def test_plugin_order_is_klpm_with_sglangs_deprioritised_requests_last(k: int | None, order: list[str]) -> None:
    q = plugin_queue(k, PLUGIN_PROMPTS)
    q.begin_pass()
    assert q.items() == order


def test_plugin_order_keeps_klpm_above_128_waiting_and_holds_back_cold_sharers_at_its_head() -> None:
    prompts = {k: PLUGIN_PROMPTS[k] for k in ("a1", "a2")} | {f"c{i}": cold(10 + i) for i in range(126)}
    prompts["h1"] = PLUGIN_PROMPTS["h1"]
    q = plugin_queue(None, prompts)
    q.begin_pass()
    assert len(q) == 129 and q.items()[:2] == ["h1", "a1"]  # LPM still on (SGLang's own would keep the list)
    assert q.items()[-1] == "a2"  # a1's cold prefix goes first; a2, sharing it, waits (as the plugin does)


def test_plugin_pick_counter_continues_across_passes() -> None:
    q = plugin_queue(2, {"c0": cold(0), "c1": cold(1), "h1": (*HOT, 1), "c2": cold(2)})
    q.begin_pass()
    assert q.pop() == "c0"  # pick 0: the oldest
    q.begin_pass()
    assert q.pop() == "h1"  # pick 1 (a new pass): the longest match, not the oldest
    q.begin_pass()
    assert q.peek() == "c1"  # pick 2: the oldest again


def test_in_the_engine_plugin_order_keeps_one_sharer_per_pass_and_raises_hits() -> None:
    """Two groups of two sharing a cold 64-token prefix, two running at most: the plugin order admits one per group
    and the second of each then hits the cache; the idealised k-LPM queue admits a group's pair together, and
    without in-batch sharing the second computes the prefix again."""
    shared = [cold(0, 64), cold(1, 64)]
    prompts = [shared[0] + cold(2, 36), shared[0] + cold(3, 36), shared[1] + cold(4, 36), shared[1] + cold(5, 36)]
    reqs = [Request(request_id=i, arrival_s=0.0, prompt=p, output_len=4) for i, p in enumerate(prompts)]
    hits = {}
    for plugin in (False, True):
        cfg = EngineConfig(sglang_lpm=True, sglang_plugin_order=plugin, max_running_requests=2)
        eng = SimEngine(cfg, MODEL, 100_000, parse_policy("klpm:4"))
        eng.add_requests(reqs)
        eng.run()
        hits[plugin] = eng.cache.hit_rate
    assert hits[True] == pytest.approx(128 / 400) and hits[False] == 0.0


def _second_admitted_at(cfg: EngineConfig) -> float:
    """How long a second request (100-token prompt, 300 outputs) waits, next to one decoding (100 + 300) in 700 KV
    tokens: with the first's share reserved (0.7 x 300), the second fits if it reserves the share of its own
    outputs too (100 + 210 + 100 + 210 < 700), not if it reserves all of them (100 + 210 + 100 + 300 > 700)."""
    eng = SimEngine(cfg, MODEL, 700, FCFSSpec())
    eng.add_requests([Request(request_id=0, arrival_s=0.0, prompt=cold(0), output_len=300),
                      Request(request_id=1, arrival_s=0.001, prompt=cold(1), output_len=300)])
    eng.run()
    first, second = eng.completed.row(0), eng.completed.row(1)
    assert first.request_id == 0
    return second.first_token_s - second.arrival_s


def test_sglang_reserves_a_new_requests_whole_output_and_the_share_of_running_ones() -> None:
    share = dict(new_token_ratio=0.7, init_new_token_ratio=0.7, token_ratio_decay_per_step=0.0)
    ideal = _second_admitted_at(EngineConfig.model_validate(share))
    sglang = _second_admitted_at(EngineConfig.model_validate({**share, "sglang_lpm": True}))
    assert ideal < 0.1  # admitted beside the first at once
    assert sglang > 1.0  # waits for the first's reserve to shrink as it decodes


def test_fixed_length_outputs_reserve_everything_whatever_the_conservativeness() -> None:
    for c in (0.1, 1.0, 3.0):
        cfg = sglang_engine_config(schedule_conservativeness=c, fixed_length_outputs=True)
        assert (cfg.init_new_token_ratio, cfg.new_token_ratio, cfg.token_ratio_decay_per_step) == (1.0, 1.0, 0.0)
    assert sglang_engine_config(schedule_conservativeness=0.1).init_new_token_ratio == pytest.approx(0.07)


def test_a_chunked_request_picks_up_what_its_batch_cached_at_its_next_chunk() -> None:
    """B (150 shared + 50) fills most of a 300-token prefill round; A (the same 150 + 50 of its own) gets the last
    100 tokens as a chunk, matched against the tree as it was before the round (nothing). At its next chunk SGLang
    re-matches A's prompt and finds B's 150 (``cached_tokens += pre_len - already_computed``): 50 more cached."""
    shared = cold(0, 150)
    b = Request(request_id=0, arrival_s=0.0, prompt=(*shared, *cold(1, 50)), output_len=2)
    a = Request(request_id=1, arrival_s=0.0, prompt=(*shared, *cold(2, 50)), output_len=2)
    cached = {}
    for sglang in (True, False):
        cfg = EngineConfig(chunked_prefill_tokens=300, sglang_lpm=sglang)
        eng = SimEngine(cfg, MODEL, 100_000, FCFSSpec())
        eng.add_requests([b, a])
        eng.run()
        cached[sglang] = {eng.completed.row(i).request_id: eng.completed.row(i).cached_tokens for i in range(2)}
    assert cached[True] == {0: 0, 1: 50}
    assert cached[False] == {0: 0, 1: 150}  # the idealised engine shares all of B's prefix within the round
