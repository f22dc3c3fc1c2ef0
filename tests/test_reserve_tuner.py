"""The ReserveTuner: schedule_conservativeness moved by retractions and a queue held back with KV headroom."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import assert_one_error_line, run_cli
from sglang_standin import running_standin

from schedctl.controller.core import Controller, ControllerParams
from schedctl.controller.decision_log import DecisionLog, read_decisions
from schedctl.controller.reserve_tuner import ReserveParams, ReserveRecord, ReserveTuner
from schedctl.controller.service import Service, run_simulated
from schedctl.engine_adapter.base import Observation
from schedctl.engine_adapter.sglang.adapter import SGLangAdapter
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.policies.spec import parse_policy
from schedctl.settings import load_settings
from schedctl.sim.engine import sglang_engine_config
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.run import Hardware, new_engine
from schedctl.stats import LatencyDist
from schedctl.workloads.registry import make_requests

ARMS = [0.3, 0.6, 1.0, 1.5]


def obs(t: int, retractions: int | None = 0, queue: int = 0, kv: float | None = 0.5, c: float | None = None,
        stale: bool = False, reachable: bool = True) -> Observation:
    return Observation(start_s=t - 1.0, end_s=float(t), arrivals=1, completions=1, queue_len=queue,
                       kv_utilization=kv, retractions=retractions, conservativeness=c, stale=stale,
                       reachable=reachable, ttft=LatencyDist(samples_s=[5.0]))


def tick(tuner: ReserveTuner, t: int, o: Observation, *, fallback: bool = False, pinned: bool = False,
         tail_s: float | None = 5.0, active: bool = True, ok: bool = True) -> ReserveRecord:
    """One tick as the controller and shell run it: the tuner decides, the shell pushes (``ok``) when told."""
    rec = tuner.step(o, t, fresh=not o.stale, fallback=fallback, pinned=pinned, tail_s=tail_s, ttft_target_s=2.0,
                     active=active)
    if rec.push:
        tuner.applied(t, ok)
    return rec


def test_retractions_raise_one_step_after_the_dwell_and_the_value_left_is_refused_for_a_while() -> None:
    tuner = ReserveTuner(ReserveParams(enabled=True, arms=ARMS, initial=1.0, min_dwell_ticks=2, lower_after_ticks=2,
                                       cooldown_ticks=10))
    assert tick(tuner, 1, obs(1, retractions=3)).rule == "dwell"  # first tick pushes 1.0; it has not run yet
    assert tick(tuner, 2, obs(2, retractions=3)).rule == "dwell"
    rec = tick(tuner, 3, obs(3, retractions=3))
    assert (rec.action, rec.rule, rec.value, rec.previous) == ("raise", "retractions", 1.5, 1.0)
    assert rec.push and rec.reconcile == "1 -> 1.5"
    for t in range(4, 6):
        assert tick(tuner, t, obs(t, retractions=2)).rule in ("dwell", "bounds")  # no step past the largest arm
    for t in range(6, 9):  # the queue waits with headroom and nothing retracts: but 1.0 retracted until tick 13
        rec = tick(tuner, t, obs(t, queue=9, kv=0.4))
    assert (rec.rule, rec.value) == ("cooldown", 1.5)
    for t in range(9, 14):
        rec = tick(tuner, t, obs(t, queue=9, kv=0.4))
    assert (rec.action, rec.rule, rec.value) == ("lower", "headroom", 1.0)


def test_a_queue_held_back_with_kv_headroom_lowers_it_and_nothing_else_does() -> None:
    p = ReserveParams(enabled=True, arms=ARMS, initial=1.0, min_dwell_ticks=1, lower_after_ticks=3)
    cases: dict[str, dict[str, Any]] = {
        "lowers": {},
        "no queue": {"queue": 0},
        "memory full": {"kv": 0.95},
        "a retraction": {"retractions": 1},
        "no retraction count": {"retractions": None},
    }
    for name, kw in cases.items():
        tuner = ReserveTuner(p)
        args = {"queue": 5, "kv": 0.5, "retractions": 0, **kw}
        values = [tick(tuner, t, obs(t, **args)).value for t in range(1, 6)]
        assert (values[-1] < 1.0) == (name == "lowers"), (name, values)
    tuner = ReserveTuner(p)  # the SLO met: no reason to admit more
    assert [tick(tuner, t, obs(t, queue=5), tail_s=1.0).value for t in range(1, 6)][-1] == 1.0
    relaxed = ReserveTuner(p.model_copy(update={"lower_only_when_slo_missed": False}))
    assert [tick(relaxed, t, obs(t, queue=5), tail_s=1.0).value for t in range(1, 6)][-1] == 0.6


def test_stale_holds_then_falls_back_to_safe_then_restores_and_a_pin_holds() -> None:
    tuner = ReserveTuner(ReserveParams(enabled=True, arms=ARMS, initial=0.6, safe=1.5, min_dwell_ticks=1))
    tick(tuner, 1, obs(1))
    assert tick(tuner, 2, obs(2, stale=True)).rule == "stale" and tuner.value == 0.6
    rec = tick(tuner, 3, obs(3, stale=True), fallback=True)
    assert (rec.action, rec.value, rec.push) == ("fallback", 1.5, True)
    rec = tick(tuner, 4, obs(4, retractions=5))
    assert (rec.action, rec.value) == ("restore", 0.6)
    rec = tick(tuner, 5, obs(5, retractions=5), pinned=True)
    assert (rec.rule, rec.value) == ("pinned", 0.6)


def test_reconcile_pushes_what_the_engine_lost_defers_when_unreachable_and_backs_off_refusals() -> None:
    tuner = ReserveTuner(ReserveParams(enabled=True, arms=ARMS, initial=1.0))
    assert tick(tuner, 1, obs(1, c=1.0)).reconcile == "first tick"
    assert not tick(tuner, 2, obs(2, c=1.0)).push  # the engine runs it
    rec = tick(tuner, 3, obs(3, c=0.5))  # the engine runs something else (restarted with another value)
    assert rec.push and rec.reconcile == "engine runs 0.5, want 1"
    rec = tick(tuner, 4, obs(4, c=0.5, reachable=False))
    assert not rec.push and rec.reconcile is not None and rec.reconcile.startswith("push deferred")
    refused = ReserveTuner(ReserveParams(enabled=True, arms=ARMS, initial=1.0))
    pushed = [t for t in range(1, 12) if tick(refused, t, obs(t), ok=False).push]
    assert pushed == list(range(1, 12))  # transient failures: retried every tick
    backoff = ReserveTuner(ReserveParams(enabled=True, arms=ARMS, initial=1.0))
    tries = []
    for t in range(1, 16):
        rec = backoff.step(obs(t), t, fresh=True, fallback=False, pinned=False, tail_s=None, ttft_target_s=2.0,
                           active=True)
        if rec.push:
            tries.append(t)
            backoff.applied(t, False, unsupported=True)
    assert tries == [1, 3, 7, 15]  # 2, 4, 8 ticks apart (reconcile's backoff)
    advisory = ReserveTuner(ReserveParams(enabled=True, arms=ARMS, initial=1.0))
    assert not tick(advisory, 1, obs(1), active=False).push


@pytest.mark.parametrize(("table", "field", "why"), [
    ("arms = [0.5, 12.0]", "reserve", "arms must be in (0, 10]"),
    ("initial = 0.7", "reserve", "initial (0.7) must be one of arms"),
    ("min_dwell_ticks = 0", "reserve.min_dwell_ticks", "greater than or equal to 1"),
    ("enable = true", "reserve.enable", "Extra inputs"),
])
def test_bad_reserve_settings_name_the_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, table: str, field: str,
                                                      why: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f"[reserve]\nenabled = true\n{table}\n")
    args = ["run", "--config", str(cfg), "--ticks", "1", "--fast"]
    line = assert_one_error_line(*run_cli(capsys, monkeypatch, args)[::2], args)
    assert str(cfg) in line and field in line and why in line, line
    assert load_settings(None).controller_params().reserve.enabled is False  # off unless asked


HW = Hardware(gpu=load_gpu("h100-sxm"), model=load_model("llama-3.1-8b"), kv_capacity_tokens=40_000)
GSP = ("gsp:num_groups=12,prompts_per_group=8,system_prompt_len=2048,question_len=128,output_len=1024,"
       "range_ratio=0.1")


def test_on_the_embedded_engine_retractions_raise_the_value_the_engine_runs_and_the_log_says_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = list(make_requests(GSP, 16.0, "poisson", num_requests=160, seed=3))
    params = ControllerParams(initial_policy="fcfs", guard={"safe_policy": "fcfs"},
                              reserve=ReserveParams(enabled=True, arms=[0.1, 0.3, 1.0, 3.0], initial=0.1))
    adapter = SimAdapter(new_engine(HW, parse_policy("fcfs"), sglang_engine_config(0.1)), iter(reqs), 1.0)
    log_path = tmp_path / "d.jsonl"
    service = Service(Controller(params), adapter, DecisionLog(log_path, fsync=False), clock=lambda: adapter.now_s)
    run_simulated(service, adapter.done, max_ticks=200)
    service.close()
    decisions = read_decisions(log_path)[0]
    raises = [d for d in decisions if d.reserve is not None and d.reserve.action == "raise"]
    assert raises and all(d.reserve.retractions for d in raises if d.reserve is not None)
    last = decisions[-1].reserve
    assert last is not None and last.value > 0.1 and adapter.engine.cfg.schedule_conservativeness == last.value
    first = raises[0]
    assert first.reserve is not None and first.reserve.applied and first.reserve.readback is not None
    assert first.reserve.readback["schedule_conservativeness"] == first.reserve.value
    code, out, _ = run_cli(capsys, monkeypatch, ["decisions", str(log_path), "--tick", str(first.tick_id)])
    assert code == 0 and "schedule_conservativeness 0.1 -> 0.3 (raise, rule retractions)" in out
    code, out, _ = run_cli(capsys, monkeypatch, ["decisions", str(log_path)])
    assert code == 0 and "c 0.1->0.3" in out
    assert json.loads(log_path.read_text().splitlines()[0])["reserve"]["rule"] == "dwell"


def test_through_sglangs_http_surface_it_is_pushed_read_back_and_pushed_again_after_a_restart() -> None:
    params = ControllerParams(reserve=ReserveParams(enabled=True, initial=1.5))
    with running_standin() as server:
        adapter = SGLangAdapter(server.url, retries=0)
        service = Service(Controller(params), adapter, clock=lambda: 0.0)
        first = service.tick()
        assert first.reserve is not None and first.reserve.applied and server.fake.conservativeness == 1.5
        assert first.reserve.readback is not None and first.reserve.readback["new_token_ratio_init"] == 1.0
        assert service.tick().reserve.push is False  # type: ignore[union-attr]  # the engine runs it
        server.fake.lose_state()  # restarted: back to SGLang's default
        again = service.tick().reserve
        assert again is not None and again.push and again.reconcile == "engine runs 1, want 1.5"
        assert again.applied and server.fake.conservativeness == 1.5
        server.fake.lose_state()
        server.fake.plugin = False  # restarted without the plugin: the push is refused, and says so
        refused = service.tick().reserve
        assert refused is not None and not refused.applied and "UnsupportedPolicy" in (refused.apply_error or "")
        adapter.close()
