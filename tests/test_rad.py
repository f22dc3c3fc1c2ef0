"""RAD: tiling arithmetic, the prefill/decode cycle, and both in the engine."""

from __future__ import annotations

import pytest

from schedctl.policies import rad
from schedctl.policies.spec import RADSpec, parse_policy
from schedctl.sim.engine import EngineConfig, SimEngine
from schedctl.sim.hybrid import HybridBatcher, IterationRecord
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware
from schedctl.workloads.registry import make_requests

HW = Hardware(gpu=load_gpu("rtx-6000-ada"), model=load_model("mistral-7b"))


@pytest.mark.parametrize(
    ("budget", "tile", "expected"), [(512, 64, 512), (500, 64, 448), (500, 128, 384), (40, 64, 40)]
)
def test_tiled_budget_is_whole_tiles(budget: int, tile: int, expected: int):
    assert rad.tiled_budget(budget, tile) == expected


@pytest.mark.parametrize(
    ("decodes", "tile", "budget", "expected"), [(0, 64, 512, 0), (10, 64, 512, 54), (64, 64, 512, 0), (65, 64, 512, 63),
                                                (500, 64, 512, 12), (512, 64, 512, 0)],
)
def test_tile_filler_tops_up_the_last_tile(decodes: int, tile: int, budget: int, expected: int):
    assert rad.tile_filler(decodes, tile, budget) == expected
    if decodes:
        assert (decodes + expected) % tile == 0 or decodes + expected == rad.tiled_budget(budget, tile)


@pytest.mark.parametrize(
    ("in_cycle", "per_cycle", "decodes", "prefills", "expected"),
    [(0, 1, True, True, "prefill"), (1, 1, True, True, "decode"), (1, 2, True, True, "prefill"),
     (5, 2, False, True, "prefill"), (0, 1, True, False, "decode"), (0, 1, False, False, None)],
)
def test_next_phase(in_cycle: int, per_cycle: int, decodes: bool, prefills: bool, expected: str | None):
    assert rad.next_phase(in_cycle, per_cycle, decodes, prefills) == expected


def _run(spec: RADSpec, rate: float = 16.0, n: int = 400) -> tuple[SimEngine, list[IterationRecord]]:
    reqs = make_requests("sharegpt", rate, "poisson", num_requests=n, seed=2)
    eng = SimEngine(EngineConfig(trace_iterations=True, tile_tokens=64), HW.step_model(), HW.kv_tokens(), spec, reqs)
    eng.run()
    assert len(eng.completed) == n and eng.retractions == 0
    assert isinstance(eng._batcher, HybridBatcher) and eng._batcher.iterations is not None
    return eng, eng._batcher.iterations


@pytest.mark.parametrize("per_cycle", [1, 3])
def test_at_most_n_prefill_batches_between_two_decode_batches(per_cycle: int):
    _eng, recs = _run(RADSpec(prefill_batches_per_cycle=per_cycle))
    streak = longest = 0
    for r in recs:
        prefill_only = bool(r.prefill) and not r.decode_ids
        if prefill_only and r.decoding:  # decodes were waiting while this prefill batch ran
            streak += 1
            longest = max(longest, streak)
            assert streak <= per_cycle, r
        elif r.decode_ids:
            streak = 0
    assert longest == per_cycle, "the load should fill the cycles"


def test_batches_are_tiled():
    tile = 48
    eng, recs = _run(parse_policy(f"rad:tile_tokens={tile},token_budget=300"))  # type: ignore[arg-type]
    prompt = dict(zip(eng.completed.column("request_id").tolist(), eng.completed.column("prompt_tokens").tolist(),
                      strict=True))
    assert all(r.budget_tokens == 288 for r in recs)  # 300 rounded down to whole tiles
    decode_batches = [r for r in recs if r.decode_ids]
    filled = [r for r in decode_batches if r.prefill]
    assert filled, "decode batches should carry prefill tokens in their last tile"
    for r in decode_batches:
        assert not r.prefill or r.tokens <= -(-len(r.decode_ids) // tile) * tile  # filler stays in the last tile
    # a prefill batch that stops inside a prompt stopped at the budget: whole tiles
    cut = [r for r in recs if not r.decode_ids and any(c + n < prompt[i] for i, n, c in r.prefill)]
    assert cut and all(r.tokens == 288 for r in cut)


def test_the_engines_tile_is_used_when_the_spec_has_none():
    eng = SimEngine(EngineConfig(tile_tokens=64), HW.step_model(), HW.kv_tokens(), RADSpec(token_budget=500))
    assert isinstance(eng._batcher, HybridBatcher) and eng._batcher._budget == 448
    eng = SimEngine(EngineConfig(), HW.step_model(), HW.kv_tokens(), RADSpec(token_budget=500))
    assert isinstance(eng._batcher, HybridBatcher) and eng._batcher._budget == 384  # the default 128
