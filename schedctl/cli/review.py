"""`schedctl decisions`: review a decision log — one line per tick that fits the terminal, a detail view of one
tick, JSON, and a timeline plot of the same selection.

The "what acted" column says in plain words which guard rule (controller/guard.py) or learner step made the
decision; ``--tick N`` shows everything the log holds about tick N.
"""

from __future__ import annotations

import math
import shutil
import sys
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import typer

from schedctl.bench.adaptive import TickPoint, tick_point
from schedctl.bench.plots import display_label
from schedctl.bench.scenarios import Scenario, get_scenario
from schedctl.bench.timeline import plot_timeline, scenario_phases
from schedctl.cli import common
from schedctl.cli.common import UsageError
from schedctl.controller.decision import Decision
from schedctl.controller.decision_log import read_decisions
from schedctl.policies.spec import PolicySpec, policy_family, policy_label
from schedctl.settings import Settings, load_settings

# rule (Decision.rule) -> what it did, in words; the reason picks among them where one rule has several outcomes
RULE_WORDS = {
    "pin": "pinned by the operator",
    "stale": "stale metrics: held",
    "restore": "fresh data: learned policy back",
    "deadline": "deadline tuner set the knob",
    "rollback": "tail regressed: rolled back",
    "dwell": "held: minimum dwell",
    "idle": "held: idle, SLO met",
    "learner": "learner's choice",
    "locality": "near the best arm",
    "explore_filter": "held: exploration not needed",
    "hysteresis": "held: gain under hysteresis",
    "step_limit": "one step to the target",
    "none": "no change",
}
REASON_WORDS = {
    "explore": "explore", "exploit": "exploit", "fallback": "fallback to the safe policy", "pinned": "pinned",
}
WALL_CLOCK_S = 1e9  # a time_s past this is epoch seconds (SGLang); below, the embedded engine's simulated clock


def acted(d: Decision) -> str:
    """The rule that acted, in plain words (the reason first where it adds something)."""
    if d.reason == "fallback":
        why = d.window.stale_reason or "stale metrics"
        return f"fallback: {why}"
    if d.rule == "stale":  # held on stale data: say why the data is stale
        return f"held: {d.window.stale_reason or 'stale metrics'}"
    if d.rule == "deadline" and d.detail:  # "theta 2.67 -> 1.67": the knob's move is the decision
        return "deadline tuner: " + d.detail.replace("theta", "Θ")
    words = RULE_WORDS.get(d.rule, d.rule or d.reason)
    if d.reason in ("explore", "exploit") and d.rule not in ("learner",):
        return f"{d.reason}: {words}"
    if d.reason in ("explore", "exploit"):
        return f"learner: {d.reason}"
    return words


def pushed(d: Decision) -> str:
    """yes / failed / no: whether this tick pushed its policy to the engine."""
    return "yes" if d.applied else ("failed" if d.push else "no")


def reserve_note(d: Decision) -> str:
    """The reserve tuner's move, when this tick made one ("c 1->1.5; "), first: a narrow column keeps it."""
    r = d.reserve
    return f"c {r.previous:g}->{r.value:g}; " if r is not None and r.changed else ""


def _reserve_line(d: Decision) -> str:
    r = d.reserve
    assert r is not None
    pushed = "pushed" if r.applied else ("push failed" if r.push else "not pushed")
    return (f"schedule_conservativeness {r.previous:g} -> {r.value:g} ({r.action}, rule {r.rule}): {r.detail}; "
            f"window retractions {'-' if r.retractions is None else r.retractions}, engine runs "
            f"{_num(r.engine_value, 'g')}; {pushed}" + (f" ({r.reconcile})" if r.reconcile else "")
            + (f"; error: {r.apply_error}" if r.apply_error else "")
            + (f"; readback {r.readback}" if r.readback else ""))


def _wall(decisions: Sequence[Decision]) -> bool:
    return bool(decisions) and decisions[0].time_s > WALL_CLOCK_S


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _since_s(text: str, decisions: Sequence[Decision], start_s: float) -> float:
    """--since: seconds since the log's start, or (wall-clock logs) an ISO time; as a time_s to compare with."""
    try:
        return start_s + float(text)
    except ValueError:
        pass
    if not _wall(decisions):
        raise UsageError(f"--since {text!r}: this log's times are simulated seconds; give seconds since its start")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: expected seconds since the log's start or an ISO time") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, a cut marked with '~' (ASCII: byte-counting tools agree)."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def _with_family(spec: PolicySpec | None) -> str:
    return "-" if spec is None else f"{display_label(policy_label(spec))} [{policy_family(spec)}]"


def compact_label(label: str) -> str:
    """A policy label for a narrow column: SLAI by its knob (``slai Θ=1.67``), others as they are."""
    label = display_label(label)
    if not label.startswith("slai:"):
        return label
    knobs = dict(kv.split("=", 1) for kv in label.removeprefix("slai:").split(",") if "=" in kv)
    if "theta_low" in knobs:
        return f"slai Θ={float(knobs['theta_low']):.3g}"
    if "tbt_slack_s" in knobs:
        return f"slai slack={float(knobs['tbt_slack_s']):.3g}s"
    return label


def _num(v: float | None, fmt: str = ".3g") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def tick_lines(decisions: Sequence[Decision], width: int, iso: bool, start_s: float) -> list[str]:
    """A header and one line per decision, each at most ``width`` characters."""
    wide = width >= 120
    cols: list[tuple[str, int, str]] = [("tick", 5, ">"), ("time" if iso else "t (s)", 8 if iso else 7, ">"),
                                         ("policy", 12, "<")]
    tail: list[tuple[str, int, str]] = [("P99 TTFT", 8, ">"), ("SLO met", 7, ">"), ("pushed", 6, "<")]
    if wide:
        tail = [("req/s", 6, ">"), ("queue", 6, ">"), *tail[:2], ("reward", 6, ">"), tail[2]]
    fixed = sum(w + 1 for _, w, _ in cols + tail)
    acted_w = max(12, min(34, width - fixed) if wide else width - fixed)
    detail_w = max(0, width - fixed - acted_w - 1) if wide else 0
    header_cols = [*cols, ("what acted", acted_w, "<"), *tail] + ([("detail", detail_w, "<")] if detail_w else [])

    def row(cells: list[str]) -> str:
        return " ".join(f"{_fit(c, w):{a}{w}}" for c, (_, w, a) in zip(cells, header_cols, strict=True)).rstrip()

    lines = [row([name for name, _, _ in header_cols])]
    for d in decisions:
        w = d.window
        when = datetime.fromtimestamp(d.time_s, UTC).strftime("%H:%M:%S") if iso else f"{d.time_s - start_s:.0f}"
        att = "-" if w.attainment is None else f"{w.attainment:.0%}"
        mid = [reserve_note(d) + acted(d)]
        end = [_num(w.ttft_p99_s) + (" s" if w.ttft_p99_s is not None else ""), att, pushed(d)]
        if wide:
            end = [_num(w.arrival_rate_rps, ".1f"), str(w.queue_len), *end[:2], _num(d.learner.reward, ".2f"), end[2]]
        cells = [str(d.tick_id), when, compact_label(d.policy_label), *mid, *end]
        if detail_w:
            cells.append(((f"{d.reconcile}; " if d.reconcile else "") + d.detail).replace("\n", " "))
        lines.append(row(cells))
    return lines


def detail_view(d: Decision, width: int, start_s: float) -> list[str]:
    """Everything about one tick, as 'name: value' lines wrapped to ``width``."""
    w, ln = d.window, d.learner
    when = _iso(d.time_s) if d.time_s > WALL_CLOCK_S else f"{d.time_s:g} s (simulated)"
    items: list[tuple[str, str]] = [
        ("tick", f"{d.tick_id} (decision {d.decision_id})"),
        ("time", f"{when}; {d.time_s - start_s:.0f} s since the log's start"),
        ("window", f"{w.start_s - start_s:.0f} .. {w.end_s - start_s:.0f} s: {w.arrivals} arrivals "
                   f"({w.arrival_rate_rps:.2f} req/s), {w.completions} done, queue {w.queue_len}, running {w.running}"),
        ("latency", f"P50 TTFT {_num(w.ttft_p50_s)} s, P99 TTFT {_num(w.ttft_p99_s)} s, tail {_num(w.tail_s)} s, "
                    f"oldest wait {_num(w.oldest_wait_s)} s, P99 TBT {_num(w.tbt_p99_s)} s, SLO met by "
                    f"{'-' if w.attainment is None else f'{w.attainment:.1%}'}"),
        ("engine", f"cache hit {_num(w.cache_hit_rate)}, KV used {_num(w.kv_utilization)}, running policy "
                   f"{w.active_policy or '-'}" + (f"; STALE: {w.stale_reason}" if w.stale else "")),
        ("policy", f"{_with_family(d.previous)} -> {display_label(d.policy_label)} [{d.policy_family}]"
                   + (" (changed)" if d.changed else " (unchanged)")),
        ("what acted", f"{acted(d)} [reason {d.reason}, rule {d.rule or '-'}]"),
        ("detail", d.detail or "-"),
        ("pushed", f"{pushed(d)} (mode {d.mode})" + (f"; why: {d.reconcile}" if d.reconcile else "")
         + (f"; error: {d.apply_error}" if d.apply_error else "")),
        ("learner", f"{ln.learner}, context {ln.context or '-'}, reward {_num(ln.reward)}"
                    + (f" ({ln.why_no_reward})" if ln.why_no_reward else "")
                    + (f", credited to {ln.credited}" if ln.credited else "")
                    + (f", proposed {ln.proposal}" if ln.proposal else "")),
    ]
    if ln.arms:
        items.append(("arms", ", ".join(f"{arm}: n={v.get('n', 0):g} mean={_num(v.get('mean'))}"
                                        for arm, v in ln.arms.items())))
    if d.guard:
        items.append(("guard", ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in d.guard.items())))
    if d.deadline:
        items.append(("deadline", ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}"
                                            for k, v in d.deadline.items())))
    if d.reserve is not None:
        items.append(("reserve", _reserve_line(d)))
    if d.conditions:
        items.append(("conditions", "; ".join(str(c) for c in d.conditions)))
    if d.whatif is not None:
        items.append(("what-if", d.whatif.model_dump_json()))
    key_w = max(len(k) for k, _ in items) + 2
    out: list[str] = []
    for key, value in items:
        wrapped = textwrap.wrap(value, width=max(20, width - key_w)) or [""]
        out.append(f"{key + ':':<{key_w}}{wrapped[0]}")
        out += [" " * key_w + more for more in wrapped[1:]]
    return out


def plot_run(points: Sequence[TickPoint], path: Path, title: str, settings: Settings | None,
             scenario: Scenario | None) -> None:
    """The timeline of a run, with the SLO of its settings and the phases of its scenario where known."""
    slo = settings.slo if settings is not None else None
    tbt = slo.tbt_p99_target_ms / 1e3 if slo is not None and settings is not None and settings.deadline else None
    plot_timeline(points, path, title, ttft_target_s=slo.ttft_p99_target_ms / 1e3 if slo is not None else None,
                  tbt_target_s=tbt, phases=scenario_phases(scenario) if scenario is not None else ())


def decisions_cmd(
    log: Path = typer.Argument(..., help="decision log (JSON lines; rotated LOG.N files are read too)"),
    last: int | None = typer.Option(None, "--last", min=1, help="only the last N decisions (after --since)"),
    since: str | None = typer.Option(None, "--since", help="only decisions from this many seconds after the log's "
                                     "start, or (a log of a real engine) from this ISO time"),
    tick: int | None = typer.Option(None, "--tick", min=1, help="show everything about tick N"),
    time: str = typer.Option("start", "--time", help="start: seconds since the log's start | iso: UTC wall time "
                             "(a log of a real engine)"),
    plot: Path | None = typer.Option(None, "--plot", help="write a PNG timeline of the shown decisions",
                                     callback=common.output_file),
    config: Path | None = typer.Option(None, "--config", help="the settings the run used: the plot draws their SLO "
                                       "and (embedded engine) the scenario's phases"),
    as_json: bool = common.JSON,
) -> None:
    """Review a decision log: one line per tick (what acted, in words), or one tick in detail with --tick N."""
    if time not in ("start", "iso"):
        raise UsageError(f"--time {time!r}: expected start or iso")
    decisions, torn = read_decisions(log)
    if not decisions:
        raise UsageError(f"{log}: no decisions in this log")
    if time == "iso" and not _wall(decisions):
        raise UsageError(f"--time iso: {log} holds simulated times (the embedded engine); use --time start")
    start_s = decisions[0].window.start_s
    shown = [d for d in decisions if since is None or d.time_s >= _since_s(since, decisions, start_s)]
    shown = shown[-last:] if last else shown
    width = shutil.get_terminal_size((80, 24)).columns
    if tick is not None:
        match = [d for d in shown if d.tick_id == tick]
        if not match:
            raise UsageError(f"--tick {tick}: no such tick in the selection (ticks {shown[0].tick_id}.."
                             f"{shown[-1].tick_id})" if shown else f"--tick {tick}: the selection is empty")
        shown = match[-1:]  # a restarted sidecar counts ticks again: the latest run's
    if as_json:
        common.print_json(shown)
    elif tick is not None:
        print("\n".join(detail_view(shown[0], width, start_s)))
    else:
        first = f"started {_iso(start_s)}" if _wall(decisions) else "simulated time"
        print(_fit(f"{len(shown)} of {len(decisions)} decisions ({first}) in {log}", width))
        print("\n".join(tick_lines(shown, width, time == "iso", start_s)))
    if torn:
        print(f"{torn} incomplete last line skipped (the writer was killed mid-line)", file=sys.stderr)
    if plot is not None:
        if not shown:
            raise UsageError(f"{log}: no decisions in the selection to plot")
        settings = load_settings(config) if config is not None else None
        sim = settings.engine.sim if settings is not None and settings.engine.adapter == "sim" else None
        scenario = get_scenario(sim.scenario, sim.scenarios_file) if sim is not None else None
        title = f"decisions · {log.name} · ticks {shown[0].tick_id}-{shown[-1].tick_id}"
        plot_run([tick_point(d) for d in shown], plot, title, settings, scenario)
        common.wrote(plot, "plot", as_json)
