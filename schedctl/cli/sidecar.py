"""`schedctl run` (the sidecar, against the embedded engine or SGLang) and `schedctl decisions` (review a log)."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from schedctl.bench.adaptive import (
    ADAPTIVE,
    RunJob,
    default_workers,
    run_jobs,
    run_ttfts,
    static_policies,
    tick_point,
)
from schedctl.bench.plots import display_label
from schedctl.bench.scenarios import Scenario, get_scenario, scenario_requests
from schedctl.cli import common, review
from schedctl.cli.common import UsageError
from schedctl.controller.decision import Decision
from schedctl.controller.persist import StateMismatch
from schedctl.controller.service import Service, open_sidecar, run_realtime, run_simulated
from schedctl.engine_adapter.base import EngineAdapter, Replayer
from schedctl.engine_adapter.replay import SimReplayer
from schedctl.engine_adapter.sim import SimAdapter
from schedctl.files import InputFileError
from schedctl.policies.spec import parse_policy
from schedctl.settings import Settings, load_settings
from schedctl.sim.run import new_engine

DRAIN_LIMIT_S = 1800.0
CONFIG = typer.Option(..., "--config", help="settings TOML: config/sidecar.sim.toml, config/sidecar.sglang.toml")


def _fmt_s(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3g}"


def _phase(scenario: Scenario, t_s: float) -> str:
    label = ""
    for start, phase in zip(scenario.phase_starts_s(), scenario.phases, strict=True):
        if t_s > start:
            label = phase.label or f"phase {scenario.phases.index(phase) + 1}"
    return label if t_s <= scenario.duration_s else "drain"


class Display:
    """The live view: a header line and the last decisions; one plain line per tick when not on a terminal."""

    def __init__(self, console: Console, title: str, scenario: Scenario | None, rows: int = 14) -> None:
        self.console, self.title, self.scenario = console, title, scenario
        self.rows: deque[Decision] = deque(maxlen=rows)
        self.live: Live | None = None
        self.start_s: float | None = None  # times shown are seconds since the first window (not epoch seconds)

    def render(self) -> Group:
        last = self.rows[-1] if self.rows else None
        head = f"[bold]{self.title}[/]"
        if last is not None:
            phase = _phase(self.scenario, last.time_s) if self.scenario else ""
            head += (f"\ntick {last.tick_id}  t={self.since(last):.0f} s  {phase}  policy [bold magenta]"
                     f"{escape(display_label(last.policy_label))}[/]  mode {last.mode}")
        wide = self.console.width >= 140
        cols = ["t (s)", "phase", "req/s", "queue", "hit", "policy", "reason", "P99 TTFT (s)", "reward", "detail"]
        if not wide:
            cols = ["t (s)", "req/s", "queue", "policy", "reason", "P99 TTFT (s)", "reward"]
        t = Table(header_style="bold", expand=False)
        for c in cols:
            t.add_column(c, justify="left" if c in ("phase", "policy", "reason", "detail") else "right",
                         no_wrap=True, overflow="ellipsis",
                         max_width={"detail": 48, "policy": 32, "reason": 30}.get(c, 18))
        for d in self.rows:
            w = d.window
            cells = {"t (s)": f"{self.since(d):.0f}", "phase": _phase(self.scenario, d.time_s) if self.scenario else "",
                     "req/s": f"{w.arrival_rate_rps:.1f}", "queue": str(w.queue_len),
                     "hit": _fmt_s(w.cache_hit_rate), "policy": display_label(d.policy_label),
                     "reason": review.acted(d),
                     "P99 TTFT (s)": _fmt_s(w.ttft_p99_s), "reward": _fmt_s(d.learner.reward), "detail": d.detail}
            t.add_row(*[cells[c] for c in cols])
        return Group(head, t)

    def since(self, d: Decision) -> float:
        return d.time_s - (self.start_s or 0.0)

    def __call__(self, d: Decision) -> None:
        if self.start_s is None:
            self.start_s = d.window.start_s
        self.rows.append(d)
        if self.live is not None:
            self.live.update(self.render())
        else:
            w = d.window
            sync = f" reconcile={d.reconcile!r}" if d.reconcile else ""
            sync += f" stale={w.stale_reason!r}" if w.stale else ""  # the cause, not only reason=guard/fallback
            print(f"tick {d.tick_id} t={self.since(d):.0f} policy={display_label(d.policy_label)} reason={d.reason} "
                  f"rule={d.rule} "
                  f"p99_ttft_s={_fmt_s(w.ttft_p99_s)} queue={w.queue_len} push={d.push} applied={d.applied}{sync}",
                  flush=True)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit makes a log write fail (EFBIG, counted), not kill us
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def state_path(settings: Settings) -> Path:
    """The learner's state, beside the decision log: LOG.jsonl -> LOG.state.json."""
    return settings.log.path.with_suffix(".state.json")


def _open(settings: Settings, adapter: EngineAdapter, run_id: str, clock: Any,
          replayer: Replayer | None = None, fresh: bool = False) -> tuple[Service, Any]:
    api = settings.api
    try:
        service, server = open_sidecar(
            settings.controller_params(), adapter, run_id=run_id, clock=clock, log_path=settings.log.path,
            log_max_bytes=settings.log.max_bytes, log_backup_count=settings.log.backup_count,
            log_fsync=settings.log.fsync, keep_decisions=settings.service.keep_decisions,
            api=(api.host, api.port, api.token) if api.enabled else None,
            api_stale_after_s=3 * settings.service.tick_interval_s if settings.engine.adapter != "sim" else None,
            replayer=replayer, state_path=state_path(settings), fresh=fresh,
        )
    except StateMismatch as exc:
        raise UsageError(f"learner state {exc}: restore those settings, or start over with --fresh") from None
    except OSError as exc:
        raise UsageError(f"cannot start the sidecar: {exc}") from None
    if service.resumed is not None:
        print(f"learner state: {service.resumed}", file=sys.stderr, flush=True)
    return service, server


def _compare(settings: Settings, scenario: Scenario, adaptive_p99_s: float, jobs: int,
             adaptive_tbt_s: float = math.nan) -> Table:
    """The run against every static policy through the same loop: P99 TTFT, and P99 TBT (what SLAI's Θ trades)."""
    sim = settings.engine.sim
    hw = common.hardware(sim.gpu, sim.model, None, None)
    params = settings.controller_params()
    cfg = common.engine_config(sim.chunked_prefill_tokens, sim.max_running_requests)
    statics = static_policies(params)
    results = run_jobs([RunJob(scenario=scenario, seed=sim.seed, policy=p, controller=params, hardware=hw, engine=cfg,
                               tick_interval_s=settings.service.tick_interval_s, drain_limit_s=DRAIN_LIMIT_S)
                        for p in statics], jobs)
    by = {r.policy: r for r in results}
    best = min(statics, key=lambda p: by[p].ttft_p99_s)
    rows = [(ADAPTIVE + ", this run", adaptive_p99_s, adaptive_tbt_s)] + [
        (p, by[p].ttft_p99_s, by[p].tbt_p99_s) for p in statics]
    slo = f"P99 TTFT ≤ {settings.slo.ttft_p99_target_ms / 1e3:g} s"
    if settings.deadline is not None:
        slo += f", P99 TBT ≤ {settings.slo.tbt_p99_target_ms:g} ms"
    return common.table(
        f"Over the whole scenario · {scenario.name} · seed {sim.seed} · SLO: {slo} (best static on TTFT: "
        f"{_static_name(best, settings)})",
        ["policy", "P99 TTFT (s)", "÷ adaptive", "P99 TBT (ms)"],
        [[_static_name(name, settings) + ("  ← best" if name == best else ""), v, v / adaptive_p99_s, tbt * 1e3]
         for name, v, tbt in rows],
    )


def _static_name(label: str, settings: Settings) -> str:
    """A static policy as the table names it: in deadline mode by the knob it holds (``Θ fixed at 5``)."""
    if settings.deadline is None or label.startswith(ADAPTIVE):
        return display_label(label)
    knob = settings.deadline.knob
    value = getattr(parse_policy(label), "theta_low" if knob == "theta" else knob)
    return f"{'Θ' if knob == 'theta' else knob} fixed at {value:.3g}"


def _run_sim(settings: Settings, fast: bool, max_ticks: int | None, plot: Path | None, compare: bool,
             console: Console, fresh: bool = False) -> None:
    sim = settings.engine.sim
    scenario = get_scenario(sim.scenario, sim.scenarios_file)
    hw = common.hardware(sim.gpu, sim.model, None, None)
    cfg = common.engine_config(sim.chunked_prefill_tokens, sim.max_running_requests)
    params = settings.controller_params()
    tick_s = settings.service.tick_interval_s
    adapter = SimAdapter(new_engine(hw, params.initial_policy, cfg), scenario_requests(scenario, sim.seed), tick_s,
                         keep_ttfts=True)
    run_id = f"{scenario.name}-s{sim.seed}-{uuid.uuid4().hex[:6]}"
    replayer = SimReplayer(adapter, settings.whatif.horizon_windows) if settings.whatif.enabled else None
    service, server = _open(settings, adapter, run_id, clock=lambda: adapter.now_s, replayer=replayer, fresh=fresh)
    expected_ticks = math.ceil(scenario.duration_s / tick_s)
    pace = 0.0 if fast else sim.demo_seconds / expected_ticks
    end_s = scenario.duration_s + DRAIN_LIMIT_S
    stop = threading.Event()
    _stop_on_signals(stop)
    title = f"schedctl · {scenario.name} · {hw.model.name} on {hw.gpu.name} (simulated)"
    plot_title = f"{scenario.name} · {hw.model.name} on {hw.gpu.name} (simulated) · seed {sim.seed}"
    if server is not None:
        title += f"\nAPI http://{settings.api.host}:{server.port}"
    display = Display(console, title, scenario)
    points = []

    def on_tick(d: Decision) -> None:
        points.append(tick_point(d))
        display(d)

    t0 = time.monotonic()
    try:
        if console.is_terminal:
            with Live(display.render(), console=console, refresh_per_second=8, transient=False) as live:
                display.live = live
                run_simulated(service, lambda: adapter.done() or adapter.now_s >= end_s, max_ticks, pace, on_tick,
                              stop)
        else:
            run_simulated(service, lambda: adapter.done() or adapter.now_s >= end_s, max_ticks, pace, on_tick, stop)
    finally:
        if server is not None:
            server.stop()
        service.close()
    wall_s = time.monotonic() - t0
    ttfts = run_ttfts(adapter)
    p99 = float(np.quantile(ttfts, 0.99)) if ttfts.size else math.nan
    console.print(f"{service.controller.tick} ticks, {adapter.now_s:.0f} simulated s in {wall_s:.1f} s; "
                  f"{ttfts.size} requests, P99 TTFT {p99:.3g} s; decisions in {settings.log.path}")
    if plot is not None:
        review.plot_run(points, plot, plot_title, settings, scenario)
        common.wrote(plot, "plot")
    if compare and not stop.is_set() and max_ticks is None:
        console.print("running the static policies through the same loop for comparison ...")
        console.print(_compare(settings, scenario, p99, default_workers(), adapter.engine.tbt.quantile(0.99)))


def _run_sglang(settings: Settings, max_ticks: int | None, console: Console, fresh: bool = False) -> None:
    from schedctl.engine_adapter.sglang.adapter import SGLangAdapter  # the CLI builds the concrete adapter
    from schedctl.engine_adapter.sglang.prometheus import PrometheusSource

    sg = settings.engine.sglang
    metrics_dir = str(sg.request_metrics_dir) if sg.request_metrics_dir else None
    source = None
    m = settings.engine.metrics
    if m.source == "prometheus":
        source = PrometheusSource(m.prometheus_url, m.selector, timeout_s=sg.timeout_s, retries=sg.retries,
                                  max_scrape_age_s=m.max_scrape_age_s)
    adapter = SGLangAdapter(sg.base_url, request_metrics_dir=metrics_dir, timeout_s=sg.timeout_s, retries=sg.retries,
                            prometheus=source)
    service, server = _open(settings, adapter, f"sglang-{uuid.uuid4().hex[:8]}", clock=time.time, fresh=fresh)
    stop = threading.Event()
    _stop_on_signals(stop)
    title = f"schedctl · SGLang at {sg.base_url} · every {settings.service.tick_interval_s:g} s"
    if source is not None:
        title += f" · metrics from Prometheus at {m.prometheus_url} {{{m.selector}}}"
    if server is not None:
        title += f"\nAPI http://{settings.api.host}:{server.port}"
    display = Display(console, title, None)
    count = [0]

    def on_tick(d: Decision) -> None:
        display(d)
        count[0] += 1
        if max_ticks is not None and count[0] >= max_ticks:
            stop.set()

    try:
        if console.is_terminal:
            with Live(display.render(), console=console, refresh_per_second=4) as live:
                display.live = live
                run_realtime(service, settings.service.tick_interval_s, stop, on_tick)
        else:
            run_realtime(service, settings.service.tick_interval_s, stop, on_tick)
    finally:
        if server is not None:
            server.stop()
        service.close()
        adapter.close()


def run_cmd(
    config: Path = CONFIG,
    fast: bool = typer.Option(False, "--fast", help="simulated engine: run unpaced (no live pacing)"),
    ticks: int | None = typer.Option(None, "--ticks", min=1, help="stop after this many ticks"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG timeline of k, load and P99 TTFT",
                                        callback=common.output_file),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="simulated engine: compare with statics"),
    fresh: bool = typer.Option(False, "--fresh", help="start the learner over (ignore its saved state beside the "
                               "decision log)"),
) -> None:
    """Run the sidecar: tick, observe, decide, push, log — against the embedded engine or an SGLang server."""
    settings = load_settings(config)
    if settings.engine.adapter == "sim":
        common.check_sim_settings(settings, config)
    if settings.whatif.enabled and settings.engine.adapter != "sim":
        raise InputFileError(config, "whatif.enabled", "the what-if replay needs the embedded engine: SGLang's "
                             "request export has no token ids, waiting queue or cache contents to replay from "
                             "(engine_adapter/replay.py)")
    if settings.deadline is not None and settings.engine.adapter != "sim":
        raise InputFileError(config, "deadline", "SLAI deadline tuning needs the embedded engine: on SGLang, slai is "
                             "its prefill order only (SGLang forms its own decode batches, so Θ and TBT slack "
                             "cannot be applied)")
    console = Console()
    if settings.engine.adapter == "sim":
        _run_sim(settings, fast, ticks, plot, compare, console, fresh)
    else:
        _run_sglang(settings, ticks, console, fresh)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("decisions")(review.decisions_cmd)
