"""What-if replay on the embedded engine: exact start state, the better arm first, the live run untouched, the
decision log record, and a failing replayer that changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.decision import Decision
from schedctl.controller.decision_log import DecisionLog, read_decisions
from schedctl.controller.objective import ObjectiveParams
from schedctl.controller.service import Service
from schedctl.controller.whatif import WhatIf, WhatIfParams
from schedctl.engine_adapter.base import ReplayReport
from schedctl.engine_adapter.replay import SimReplayer
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import KValue, parse_policy
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.tokens import IdAllocator
from schedctl.workloads.registry import make_requests
from schedctl.workloads.types import Request

HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"))
ARMS: list[KValue] = [1, 2, 4, 8, "inf"]
GSP = "gsp:num_groups=128,system_prompt_len=4096"


def gsp_adapter(policy: str = "klpm:4", rate: float = 10.0, duration_s: float = 60.0, **kw: Any) -> SimAdapter:
    eng = new_engine(HW, parse_policy(policy))
    return SimAdapter(eng, make_requests(GSP, rate, duration_s=duration_s, seed=3), 5.0, **kw)


def test_replaying_the_running_arm_reproduces_the_live_window_exactly() -> None:
    ad = gsp_adapter()
    rp = SimReplayer(ad, horizon_windows=1)
    busy = 0
    for i in range(10):
        if i == 5:
            ad.apply(parse_policy("lpm"))  # a policy change between windows, as the shell's apply makes it
        rp.begin_window()
        live = ad.observe()
        running: KValue = "inf" if i >= 5 else 4
        rep = rp.replay([running, 1])
        assert rep.error is None and rep.start_s == live.start_s and rep.end_s == live.end_s
        own = rep.results[0].observation
        assert own is not None and own.model_dump() == live.model_dump()
        busy += live.queue_len > 0
    assert busy >= 3  # the windows had a queue to order


def test_a_two_window_horizon_replays_both_windows_from_the_older_state() -> None:
    ad = gsp_adapter()
    rp = SimReplayer(ad, horizon_windows=2)
    lives = []
    for _ in range(4):
        rp.begin_window()
        lives.append(ad.observe())
    rep = rp.replay([4])
    own = rep.results[0].observation
    assert rep.windows == 2 and rep.start_s == lives[-2].start_s and rep.end_s == lives[-1].end_s
    assert own is not None and own.arrivals == lives[-2].arrivals + lives[-1].arrivals
    both = sorted(lives[-2].ttft.samples_s + lives[-1].ttft.samples_s)
    assert sorted(own.ttft.samples_s) == both and own.queue_len == lives[-1].queue_len


def alternating_burst(n: int = 80, prefix: int = 4096, spacing_s: float = 0.02) -> list[Request]:
    """Two prompt groups with long prefixes, interleaved, arriving as a burst: FCFS alternates groups."""
    ids = IdAllocator()
    a, b = ids.take(prefix), ids.take(prefix)
    return [Request(i, i * spacing_s, (a if i % 2 == 0 else b) + ids.take(16), 4) for i in range(n)]


def test_replay_ranks_the_clearly_better_arm_first() -> None:
    small = HW.model_copy(update={"kv_capacity_tokens": 7000})  # room for one of the two prefixes
    ad = SimAdapter(new_engine(small, parse_policy("fcfs")), alternating_burst(), 2.0)
    rp = SimReplayer(ad, horizon_windows=1)
    rp.begin_window()
    ad.observe()
    rep = rp.replay([1, 2, 4, "inf"])
    rec = WhatIf(WhatIfParams(), ObjectiveParams(ttft_target_s=0.5, min_samples=5), 0.25).score(rep)
    assert rec.evidence and rec.best == "lpm"
    rewards = [rec.scores[a].reward for a in ("fcfs", "klpm:2", "klpm:4", "lpm")]
    assert all(r is not None for r in rewards)
    assert rewards == sorted(rewards)  # the more prefix matching, the better here
    assert rewards[-1] - rewards[0] > 0.2  # type: ignore[operator]


@pytest.mark.parametrize("trim_log", [True, False])
def test_replays_leave_the_live_run_untouched(trim_log: bool) -> None:
    plain = gsp_adapter(keep_ttfts=True, trim_log=trim_log)
    probed = gsp_adapter(keep_ttfts=True, trim_log=trim_log)
    rp = SimReplayer(probed, horizon_windows=2)
    seen_plain, seen_probed = [], []
    while not plain.done():
        seen_plain.append(plain.observe().model_dump())
    while not probed.done():
        rp.begin_window()
        seen_probed.append(probed.observe().model_dump())
        rp.replay(ARMS)
    assert seen_plain == seen_probed
    assert plain.ttfts_s is not None and probed.ttfts_s is not None
    assert np.array_equal(np.frombuffer(plain.ttfts_s), np.frombuffer(probed.ttfts_s))
    assert plain.engine.cache.hit_tokens == probed.engine.cache.hit_tokens
    if not trim_log:  # the request log the live run keeps is the live run's alone
        assert plain.engine.completed.column("request_id").tolist() == probed.engine.completed.column(
            "request_id").tolist()


def test_a_budget_stops_after_the_first_arm() -> None:
    ad = gsp_adapter()
    rp = SimReplayer(ad, horizon_windows=1)
    rp.begin_window()
    ad.observe()
    rep = rp.replay([4, 2, 8], budget_ms=1e-9)
    assert [r.arm for r in rep.results] == [4] and rep.skipped == [2, 8]
    assert SimReplayer(gsp_adapter(), 1).replay([4]).error is not None  # no snapshot yet: an error, not an exception


def drive(params: ControllerParams, replayer: Any = None, log: DecisionLog | None = None,
          ticks: int = 16) -> list[Decision]:
    ad = gsp_adapter(rate=14.0, duration_s=90.0)
    rp = replayer(ad) if callable(replayer) else replayer
    svc = Service(Controller(params), ad, log, clock=lambda: ad.now_s, replayer=rp)
    return [svc.tick() for _ in range(ticks)]


def same_decisions(a: list[Decision], b: list[Decision]) -> bool:
    keys = ("policy", "reason", "detail", "learner")
    return [d.model_dump(include=set(keys)) for d in a] == [d.model_dump(include=set(keys)) for d in b]


class Spy:
    def __init__(self) -> None:
        self.calls = 0

    def begin_window(self) -> None:
        self.calls += 1

    def replay(self, arms: Any, budget_ms: Any = None) -> ReplayReport:
        self.calls += 1
        return ReplayReport()


def test_disabled_replay_is_never_called_and_decides_as_without_a_replayer() -> None:
    spy = Spy()
    base = drive(ControllerParams())
    with_spy = drive(ControllerParams(), spy)
    assert spy.calls == 0 and all(d.whatif is None for d in with_spy)
    assert same_decisions(base, with_spy)
    assert len({d.policy_label for d in base}) > 1  # the run is not trivial: the controller moved


def test_enabled_replay_writes_what_it_scored_to_the_decision_log(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.jsonl", fsync=False)
    decisions = drive(ControllerParams(whatif={"enabled": True, "horizon_windows": 1}), lambda ad: SimReplayer(ad, 1),
                      log)
    log.close()
    back, torn = read_decisions(tmp_path / "d.jsonl")
    assert torn == 0 and len(back) == len(decisions)
    for d in back:
        assert d.whatif is not None and d.whatif.error is None
        assert set(d.whatif.scores) == {"fcfs", "klpm:2", "klpm:4", "klpm:8", "lpm"}
        assert d.whatif.end_s == d.window.end_s and d.whatif.start_s == d.window.start_s and d.whatif.windows == 1
    evidence = [d for d in back if d.whatif is not None and d.whatif.evidence]
    assert evidence and all(set(d.whatif.credited) == set(d.whatif.scores) for d in evidence)  # type: ignore[union-attr]
    assert all(d.whatif.fidelity == 0.0 for d in evidence if d.whatif.fidelity is not None)  # type: ignore[union-attr]
    assert any(d.whatif.fidelity is not None for d in evidence)  # type: ignore[union-attr]


class Boom:
    """A replayer that fails: begin_window on even calls, replay always."""

    def __init__(self) -> None:
        self.n = 0

    def begin_window(self) -> None:
        self.n += 1
        if self.n % 2 == 0:
            raise RuntimeError("snapshot failed")

    def replay(self, arms: Any, budget_ms: Any = None) -> ReplayReport:
        raise ValueError("replay failed")


def test_a_failing_replayer_degrades_to_no_prior() -> None:
    base = drive(ControllerParams())
    failing = drive(ControllerParams(whatif={"enabled": True}), Boom())
    assert all(d.whatif is not None and d.whatif.error is not None and not d.whatif.credited for d in failing)
    assert {("snapshot" in (d.whatif.error or "")) for d in failing} == {True, False}  # type: ignore[union-attr]
    assert same_decisions(base, failing)
