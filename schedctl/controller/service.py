"""The shell around Controller.step: the tick (observe, decide, apply, log), its clock, metrics and API.

One tick, whatever drives it::

    replayer.begin_window()               # only with the what-if replay on: keep the window's start state
    observation = adapter.observe()       # EngineUnavailable (or any adapter failure) -> a stale observation
    report = replayer.replay(arms)        # only on a replay tick; a failure becomes a report with an error
    decision = controller.step(observation, report)
    if decision.push: adapter.apply(decision.policy)   # failures become conditions (reconcile.py), never raised
    if decision.reserve.push: adapter.set_conservativeness(value)   # [reserve] on: the second knob, same rules
    decision log <- one line (fsynced);  metrics, recent decisions <- updated

Drivers: :func:`run_simulated` calls ``tick`` back to back (the embedded engine's ``observe`` advances simulated
time by one window), optionally paced for a live display; :func:`run_realtime` lets APScheduler call it every
``tick_interval_s`` seconds of wall time against a real engine. Both go through the same ``Service.tick``, so
logging, the API and the guard behave the same in both.

The sidecar never takes the engine down and never stops on the engine's account: every adapter failure becomes
a stale window or a failed apply in the log. A decision log that cannot be written (full disk) is counted and
reported by ``/healthz`` as degraded; the loop goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schedctl.controller.core import Controller, unavailable
from schedctl.controller.decision import REASONS, Decision
from schedctl.controller.decision_log import DecisionLog
from schedctl.controller.ktuner import arm_of_policy
from schedctl.controller.persist import StateMismatch, controller_state, restore
from schedctl.engine_adapter.base import (
    EngineAdapter,
    EngineError,
    EngineUnavailable,
    Observation,
    Replayer,
    ReplayReport,
    ReserveKnob,
    UnsupportedPolicy,
    failed_report,
)
from schedctl.files import atomic_write_text
from schedctl.policies.spec import PolicySpec

logger = logging.getLogger("schedctl.service")


class ServiceMetrics:
    """The sidecar's own Prometheus metrics (``schedctl_*``), in a registry of its own."""

    def __init__(self, ttft_target_s: float | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.ticks = Counter("schedctl_ticks", "controller ticks", registry=r)
        self.decisions = Counter("schedctl_decisions", "decisions by reason", ["reason"], registry=r)
        self.policy_changes = Counter("schedctl_policy_changes", "decisions that changed the policy", registry=r)
        self.unavailable = Counter("schedctl_engine_unavailable", "ticks whose observe() failed", registry=r)
        self.apply_errors = Counter("schedctl_apply_errors", "failed policy pushes", registry=r)
        self.log_errors = Counter("schedctl_decision_log_errors", "decision log writes that failed", registry=r)
        self.policy_k = Gauge("schedctl_policy_k", "k of the chosen policy (0 = LPM, -1 = not k-LPM)", registry=r)
        self.reward = Gauge("schedctl_reward", "reward of the last window (NaN: none)", registry=r)
        self.ttft_p99 = Gauge("schedctl_window_ttft_p99_seconds", "P99 TTFT of the last window", registry=r)
        self.queue = Gauge("schedctl_engine_queue_length", "waiting requests at the end of the window", registry=r)
        self.pinned = Gauge("schedctl_pinned", "1 while an operator pin holds", registry=r)
        self.active = Gauge("schedctl_mode_active", "1 in active mode, 0 in advisory mode", registry=r)
        self.tick_seconds = Histogram(
            "schedctl_tick_duration_seconds", "wall time of one tick (observe + decide + apply + log)", registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )
        self.replay_seconds = Histogram(
            "schedctl_whatif_replay_duration_seconds", "wall time of one tick's what-if replays", registry=r,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
        )
        self.replay_errors = Counter("schedctl_whatif_replay_errors", "ticks whose what-if replay failed", registry=r)
        self.stale = Counter("schedctl_stale_windows", "ticks whose window was stale (engine or metrics source out, "
                             "implausible metrics)", registry=r)
        self.policy = Gauge("schedctl_policy", "1 for the policy the controller runs (its label), over time",
                            ["policy"], registry=r)
        self.slo_ttft = Gauge("schedctl_slo_ttft_p99_seconds", "the P99 TTFT target (slo.ttft_p99_target_ms)",
                              registry=r)
        self._policy_label: str | None = None
        if ttft_target_s is not None:
            self.slo_ttft.set(ttft_target_s)
        self.conservativeness = Gauge("schedctl_reserve_conservativeness",
                                      "schedule_conservativeness the reserve tuner wants (NaN: tuner off)", registry=r)
        for reason in REASONS:
            self.decisions.labels(reason)

    def record(self, d: Decision, tick_s: float) -> None:
        self.ticks.inc()
        self.decisions.labels(d.reason).inc()
        if d.changed:
            self.policy_changes.inc()
        if d.apply_error is not None:
            self.apply_errors.inc()
        k = arm_of_policy(d.policy)  # -1: not on the k axis (hrrn, spf, lpm-aging, sglang:, slai)
        self.policy_k.set(k if isinstance(k, int) else (0 if k == "inf" else -1))
        self.reward.set(d.learner.reward if d.learner.reward is not None else float("nan"))
        self.ttft_p99.set(d.window.ttft_p99_s if d.window.ttft_p99_s is not None else float("nan"))
        self.queue.set(d.window.queue_len)
        if d.window.stale:
            self.stale.inc()
        if d.policy_label != self._policy_label:  # one series per policy, present while it runs
            if self._policy_label is not None:
                self.policy.remove(self._policy_label)
            self._policy_label = d.policy_label
            self.policy.labels(d.policy_label).set(1)
        self.pinned.set(1 if d.reason == "pinned" else 0)
        self.active.set(1 if d.mode == "active" else 0)
        self.tick_seconds.observe(tick_s)
        self.conservativeness.set(d.reserve.value if d.reserve is not None else float("nan"))
        if d.whatif is not None:
            self.replay_seconds.observe(d.whatif.wall_ms / 1e3)
            if d.whatif.error is not None:
                self.replay_errors.inc()


class Service:
    """Owns the controller, the adapter, the decision log and the recent decisions; ``tick`` is thread-safe."""

    def __init__(
        self, controller: Controller, adapter: EngineAdapter, log: DecisionLog | None = None, *,
        clock: Callable[[], float] = time.time, keep_decisions: int = 1000, metrics: ServiceMetrics | None = None,
        perf_clock: Callable[[], float] = time.perf_counter, replayer: Replayer | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.controller = controller
        self.replayer = replayer  # the what-if replay (used only when the controller's [whatif] is on)
        self.adapter = adapter
        self.log = log
        self.clock = clock  # the engine's clock (wall, or the simulator's): stamps windows observe() could not make
        self.perf_clock = perf_clock
        self.metrics = metrics
        self.recent: deque[Decision] = deque(maxlen=keep_decisions)
        self.lock = threading.RLock()
        self.last_end_s: float | None = None
        self.log_healthy = True
        self.log_errors = 0  # decisions the log could not take (full disk, file-size limit)
        self.state_path = state_path  # the learner's state, replaced after every tick (persist.py)
        self.state_errors = 0
        self.resumed: str | None = None  # what open_sidecar restored (None: started fresh)
        self.last_tick_wall_s: float | None = None
        self._replay_error: str | None = None

    def _observe(self) -> Observation:
        start = self.last_end_s
        try:
            obs = self.adapter.observe()
        except EngineUnavailable as exc:
            reason = f"engine unavailable: {exc}"
        except EngineError as exc:
            reason = f"engine error: {exc}"
        except Exception as exc:  # an adapter bug must not stop the sidecar; it is logged and counted
            logger.exception("adapter observe() failed")
            reason = f"adapter failure: {type(exc).__name__}: {exc}"
        else:
            return obs
        if self.metrics is not None:
            self.metrics.unavailable.inc()
        now = self.clock()
        return unavailable(start if start is not None and start < now else now - 1e-9, now, reason)

    def _supported_kinds(self) -> frozenset[str] | None:
        try:
            return self.adapter.capabilities().policy_kinds
        except Exception:  # the engine went away, or an adapter bug: the condition just says less
            return None

    def _apply(self, decision: Decision) -> Decision:
        try:
            self.adapter.apply(decision.policy)
        except UnsupportedPolicy as exc:  # retrying at once cannot heal it: a condition with backoff
            return self.controller.record_apply(decision, False, f"UnsupportedPolicy: {exc}", unsupported=True,
                                                supported_kinds=self._supported_kinds())
        except EngineError as exc:
            return self.controller.record_apply(decision, False, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            logger.exception("adapter apply() failed")
            return self.controller.record_apply(decision, False, f"adapter failure: {type(exc).__name__}: {exc}")
        return self.controller.record_apply(decision, True)

    def _apply_reserve(self, decision: Decision) -> Decision:
        """Push the reserve tuner's value (``ReserveKnob``); failures become the record's error, never raised."""
        assert decision.reserve is not None
        value, record = decision.reserve.value, self.controller.record_reserve_apply
        if not isinstance(self.adapter, ReserveKnob):
            return record(decision, False, "this engine adapter cannot set schedule_conservativeness", unsupported=True)
        try:
            readback = self.adapter.set_conservativeness(value)
        except (UnsupportedPolicy, ValueError) as exc:
            return record(decision, False, f"{type(exc).__name__}: {exc}", unsupported=True)
        except EngineError as exc:
            return record(decision, False, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            logger.exception("adapter set_conservativeness() failed")
            return record(decision, False, f"adapter failure: {type(exc).__name__}: {exc}")
        return record(decision, True, readback=readback)

    def _begin_window(self) -> bool:
        """Let the replayer keep the state at the start of this window; False if it failed (no replay then)."""
        if self.replayer is None or not self.controller.whatif_active():
            return False
        try:
            self.replayer.begin_window()
        except Exception as exc:  # a replay failure never stops the tick
            logger.exception("replayer begin_window() failed")
            self._replay_error = f"begin_window: {type(exc).__name__}: {exc}"
            return False
        self._replay_error = None
        return True

    def _replay(self, obs: Observation) -> ReplayReport | None:
        arms = self.controller.whatif_arms()
        if self.replayer is None or not arms or obs.stale:
            return None
        if self._replay_error is not None:
            return failed_report(self._replay_error)
        budget_ms = self.controller.params.whatif.budget_ms
        t0 = self.perf_clock()
        try:
            return self.replayer.replay(arms, budget_ms if budget_ms > 0 else None)
        except Exception as exc:
            logger.exception("replayer replay() failed")
            return failed_report(f"{type(exc).__name__}: {exc}", (self.perf_clock() - t0) * 1e3)

    def tick(self) -> Decision:
        with self.lock:
            t0 = self.perf_clock()
            began = self._begin_window()
            obs = self._observe()
            self.last_end_s = obs.end_s
            report = self._replay(obs) if began or self._replay_error is not None else None
            decision = self.controller.step(obs, report) if report is not None else self.controller.step(obs)
            if decision.push:
                decision = self._apply(decision)
            if decision.reserve is not None and decision.reserve.push:
                decision = self._apply_reserve(decision)
            if self.log is not None:
                try:
                    self.log.write(decision)
                    self.log_healthy = True
                except OSError as exc:  # the log cut the partial line back: it still ends on a whole line
                    self.log_healthy = False
                    self.log_errors += 1
                    logger.error("decision log write failed (tick %d not logged): %s", decision.tick_id, exc)
                    if self.metrics is not None:
                        self.metrics.log_errors.inc()
            self.recent.append(decision)
            self._save_state()
            if self.metrics is not None:
                self.metrics.record(decision, self.perf_clock() - t0)
            self.last_tick_wall_s = time.time()
            return decision

    def _save_state(self) -> None:
        """Replace the learner's state file (atomically: a crash leaves the previous one); failures are counted."""
        if self.state_path is None:
            return
        try:
            atomic_write_text(self.state_path, json.dumps(controller_state(self.controller)))
        except (OSError, TypeError, ValueError) as exc:
            self.state_errors += 1
            logger.error("learner state not saved: %s", exc)

    # -- operator controls (the API calls these) ----------------------------------------------------------------
    def pin(self, spec: PolicySpec) -> None:
        with self.lock:
            self.controller.pin(spec)

    def unpin(self) -> None:
        with self.lock:
            self.controller.unpin()

    def set_mode(self, mode: Any) -> None:
        with self.lock:
            self.controller.set_mode(mode)

    def decisions_since(self, since: int) -> list[Decision]:
        with self.lock:
            return [d for d in self.recent if d.tick_id > since]

    def status(self) -> dict[str, Any]:
        with self.lock:
            last = self.recent[-1] if self.recent else None
            return {
                **self.controller.status(),
                "log_healthy": self.log_healthy,
                "log_write_errors": self.log_errors,
                "state_save_errors": self.state_errors,
                "last_decision": last.model_dump(mode="json") if last is not None else None,
            }

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def run_simulated(
    service: Service, done: Callable[[], bool], max_ticks: int | None = None, seconds_per_tick: float = 0.0,
    on_tick: Callable[[Decision], None] | None = None, stop: threading.Event | None = None,
) -> int:
    """Tick back to back until ``done()`` (or ``max_ticks``, or ``stop``); ``seconds_per_tick`` paces a display."""
    ticks = 0
    next_at = time.monotonic()
    while not done() and (max_ticks is None or ticks < max_ticks) and not (stop is not None and stop.is_set()):
        decision = service.tick()
        ticks += 1
        if on_tick is not None:
            on_tick(decision)
        if seconds_per_tick > 0:
            next_at += seconds_per_tick
            delay = next_at - time.monotonic()
            if delay > 0:
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
    return ticks


def run_realtime(service: Service, tick_interval_s: float, stop: threading.Event,
                 on_tick: Callable[[Decision], None] | None = None) -> None:
    """APScheduler calls ``service.tick`` every ``tick_interval_s`` of wall time until ``stop`` is set."""
    from apscheduler.schedulers.background import BackgroundScheduler

    def job() -> None:
        try:
            decision = service.tick()
        except Exception:  # a bug in a tick must not end the schedule; the next tick tries again
            logger.exception("tick failed")
            return
        if on_tick is not None:
            on_tick(decision)

    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
    scheduler.add_job(job, "interval", seconds=tick_interval_s, id="tick")
    scheduler.start()
    try:
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)


def load_state(controller: Controller, path: Path) -> str | None:
    """Restore the learner's state from ``path`` (None if there is none); StateMismatch names what differs."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        state = json.loads(text)
    except ValueError:
        raise StateMismatch(f"{path}: not JSON") from None
    try:
        return restore(controller, state)
    except StateMismatch as exc:
        raise StateMismatch(f"{path}: {exc}") from None


def open_sidecar(
    params: Any, adapter: EngineAdapter, *, run_id: str, clock: Callable[[], float], log_path: Any = None,
    log_max_bytes: int = 10_000_000, log_backup_count: int = 5, log_fsync: bool = True, keep_decisions: int = 1000,
    api: tuple[str, int, str] | None = None, api_stale_after_s: float | None = None, replayer: Replayer | None = None,
    state_path: Path | None = None, fresh: bool = False,
) -> tuple[Service, Any]:
    """Assemble controller, decision log, metrics, service and (``api`` = (host, port, token)) the API server.

    ``state_path``: the learner's state, restored at start unless ``fresh`` (StateMismatch when it was written
    under other settings) and replaced after every tick. Returns (service, api_server or None); the API is
    already listening. The caller closes both; ``service.resumed`` says what was restored.
    """
    controller = Controller(params, run_id=run_id)
    resumed = load_state(controller, state_path) if state_path is not None and not fresh else None
    log = DecisionLog(log_path, log_max_bytes, log_backup_count, fsync=log_fsync) if log_path is not None else None
    service = Service(controller, adapter, log, clock=clock, keep_decisions=keep_decisions,
                      metrics=ServiceMetrics(controller.params.objective.ttft_target_s),
                      replayer=replayer, state_path=state_path)
    service.resumed = resumed
    server = None
    if api is not None:
        from schedctl.controller.api import ApiServer, make_app

        host, port, token = api
        server = ApiServer(make_app(service, token, stale_after_s=api_stale_after_s), host, port)
        try:
            server.start()
        except Exception:
            service.close()
            raise
    return service, server
