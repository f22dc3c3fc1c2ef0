"""The timeline plot of a sidecar run (`schedctl run --plot`, `schedctl decisions --plot`): one panel per story.

Panels, against time (s): the knob the controller moves (k of k-LPM; with arms of several families — hrrn, spf,
lpm-aging, sglang: — the policy itself on a categorical axis grouped and coloured by family; for SLAI the
DeadlineTuner's Θ or TBT slack,
with the window P99 TBT it holds against its target in the panel below), the load (arrivals in req/s and the
waiting queue), and the window P99 TTFT with its SLO. The scenario's phases are shaded and named on every panel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from schedctl.bench.adaptive import TickPoint, k_value
from schedctl.bench.plots import _pyplot, save
from schedctl.bench.scenarios import Scenario
from schedctl.policies.spec import KLPMSpec, parse_policy, policy_family

KNOB_AXIS = {"theta": "Θ (theta_low)", "tbt_slack_s": "TBT slack (s)"}


class PhaseSpan(NamedTuple):
    start_s: float
    end_s: float
    label: str


def scenario_phases(scenario: Scenario) -> list[PhaseSpan]:
    starts = scenario.phase_starts_s()
    return [PhaseSpan(s, s + p.duration_s, p.label or f"phase {i + 1}")
            for i, (s, p) in enumerate(zip(starts, scenario.phases, strict=True))]


def _nan(v: float | None, scale: float = 1.0) -> float:
    return math.nan if v is None else v * scale


def plot_timeline(points: Sequence[TickPoint], path: str | os.PathLike[str], title: str,
                  ttft_target_s: float | None = None, tbt_target_s: float | None = None,
                  phases: Sequence[PhaseSpan] = ()) -> None:
    """Write the timeline PNG of ``points`` (one per tick)."""
    save(timeline_figure(points, title, ttft_target_s, tbt_target_s, phases), path)


FAMILY_COLOURS = {"klpm": "tab:purple", "lpm-aging": "tab:brown", "hrrn": "tab:cyan", "spf": "tab:pink",
                  "sglang": "tab:gray"}


def policy_rows(labels: Sequence[str]) -> list[str]:
    """The distinct policies of a run, bottom to top: the k axis by k (fcfs .. lpm), lpm-aging by N, then the
    other families by name."""
    def key(label: str) -> tuple[int, str, float, str]:
        try:
            spec = parse_policy(label)
        except ValueError:
            return (3, "", 0.0, label)
        family = policy_family(spec)
        if family == "klpm":
            return (0, family, k_value(label), label)
        if family == "lpm-aging" and isinstance(spec, KLPMSpec):
            return (1, family, float(spec.aging_tokens_per_pass), label)
        return (2, family, 0.0, label)
    return sorted(dict.fromkeys(labels), key=key)


def _policy_panel(ax: Any, t: Sequence[float], labels: Sequence[str]) -> None:
    """The running policy on a categorical axis, each family in its colour (mixed-family arm sets)."""
    rows = policy_rows(labels)
    y = [rows.index(label) for label in labels]
    ax.step(t, y, where="post", color="lightgray", linewidth=1)
    families: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        families.setdefault(_family(label), []).append(i)
    for family, idx in families.items():
        ax.scatter([t[i] for i in idx], [y[i] for i in idx], s=12, color=FAMILY_COLOURS.get(family, "black"),
                   label=f"family {family}", zorder=3)
    ax.set_yticks(range(len(rows)), [f"{r} [{_family(r)}]" for r in rows], fontsize=8)
    ax.set_ylim(-0.5, len(rows) - 0.5)
    ax.set_ylabel("policy [family]")


def _family(label: str) -> str:
    try:
        return policy_family(parse_policy(label))
    except ValueError:
        return "?"


def timeline_figure(points: Sequence[TickPoint], title: str, ttft_target_s: float | None = None,
                    tbt_target_s: float | None = None, phases: Sequence[PhaseSpan] = ()) -> Any:
    """The figure of :func:`plot_timeline` (a matplotlib Figure)."""
    plt = _pyplot()
    t = [p.time_s for p in points]
    if t:  # a selection (decisions --since/--last): the phases it spans, cut to it
        step = t[1] - t[0] if len(t) > 1 else 0.0
        lo, hi = t[0] - step, t[-1]
        phases = [PhaseSpan(max(ph.start_s, lo), min(ph.end_s, hi), ph.label) for ph in phases
                  if ph.end_s > lo and ph.start_s < hi]
    knob = next((p.knob for p in points if p.knob is not None), None)
    n = 4 if knob is not None else 3
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.3 * n + 0.6), sharex=True)
    if knob is not None:
        ax = axes[0]
        ax.step(t, [_nan(p.knob_value) for p in points], where="post", color="tab:purple",
                label=f"{KNOB_AXIS.get(knob, knob)} set by the deadline tuner")
        ax.set_ylabel(KNOB_AXIS.get(knob, knob))
        tbt = axes[1]
        tbt.plot(t, [_nan(p.tbt_p99_s, 1e3) for p in points], color="tab:orange", label="window P99 TBT")
        if tbt_target_s is not None:
            tbt.axhline(tbt_target_s * 1e3, color="black", linestyle="--", linewidth=1,
                        label=f"target {tbt_target_s * 1e3:g} ms")
        tbt.set_ylabel("P99 TBT (ms)")
    elif any(math.isnan(k_value(p.policy)) for p in points):
        _policy_panel(axes[0], t, [p.policy for p in points])
    else:
        ax = axes[0]
        ks = [k_value(p.policy) for p in points]
        finite = [k for k in ks if math.isfinite(k)]
        top = max(finite, default=8.0) * 2
        ax.step(t, [top if math.isinf(k) else k for k in ks], where="post", color="tab:purple",
                label="k of k-LPM: 1 oldest, then k-1 by prefix (1 = FCFS, top = LPM)")
        ax.set_yscale("log", base=2)
        ticks = [*sorted(set(finite)), top]
        ax.set_yticks(ticks, [("fcfs" if v == 1 else ("lpm" if v == top else f"{v:g}")) for v in ticks])
        ax.minorticks_off()
        ax.set_ylabel("k (picks per oldest-first)")
    load = axes[-2]
    load.plot(t, [p.arrival_rate_rps for p in points], color="tab:blue", label="arrivals (req/s)")
    load.set_ylabel("arrivals (req/s)")
    queue = load.twinx()
    queue.plot(t, [p.queue_len for p in points], color="tab:gray", alpha=0.7, label="waiting (requests)")
    queue.set_ylabel("waiting (requests)")
    lines = load.get_legend_handles_labels()[0] + queue.get_legend_handles_labels()[0]
    load.legend(lines, [str(h.get_label()) for h in lines], loc="best", fontsize=8)
    ttft = axes[-1]
    ttft.plot(t, [_nan(p.ttft_p99_s) for p in points], color="tab:red", label="window P99 TTFT")
    if ttft_target_s is not None:
        ttft.axhline(ttft_target_s, color="black", linestyle="--", linewidth=1,
                     label=f"SLO: P99 TTFT ≤ {ttft_target_s:g} s")
    ttft.set_yscale("log")
    ttft.set_ylabel("P99 TTFT (s)")
    ttft.set_xlabel("time (s)")
    for i, a in enumerate(axes):
        for j, ph in enumerate(phases):
            a.axvspan(ph.start_s, ph.end_s, color="tab:green" if j % 2 else "tab:olive", alpha=0.08, linewidth=0)
        a.grid(True, alpha=0.3)
        if a is not load:
            a.legend(loc="best", fontsize=8)
        if i == 0:
            for ph in phases:
                a.text((ph.start_s + ph.end_s) / 2, 1.01, ph.label, transform=a.get_xaxis_transform(),
                       ha="center", va="bottom", fontsize=8, color="dimgray")
    if t:
        axes[-1].set_xlim(t[0] - (t[1] - t[0] if len(t) > 1 else 1.0), t[-1] + (t[-1] - t[0]) * 0.02)
    fig.suptitle(title)
    return fig
