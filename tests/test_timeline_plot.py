"""The run timeline (bench/timeline.py): the SLO as a line, the scenario's phases shaded and named, a legend entry
for every series, a unit on every axis, the knob the controller moves in its own panel (k, or Θ with P99 TBT)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schedctl.bench.adaptive import TickPoint
from schedctl.bench.scenarios import get_scenario
from schedctl.bench.timeline import scenario_phases, timeline_figure

UNIT = re.compile(r"\((s|ms|req/s|requests|theta_low|picks per oldest-first)\)")


def _points(deadline: bool) -> list[TickPoint]:
    return [TickPoint(time_s=10.0 * i, policy="slai" if deadline else ("klpm:4" if i % 3 else "lpm"),
                      reason="guard", arrival_rate_rps=5.0 + i, queue_len=i % 4, ttft_p99_s=0.1 * i,
                      cache_hit_rate=0.5, tbt_p99_s=0.02 + 0.001 * i, knob="theta" if deadline else None,
                      knob_value=float(i % 5) if deadline else None) for i in range(1, 92)]


def _lines_and_legends(fig: object) -> tuple[list[str], list[str]]:
    drawn, legend = [], []
    for ax in fig.axes:  # type: ignore[attr-defined]
        drawn += [str(ln.get_label()) for ln in ax.get_lines() if not str(ln.get_label()).startswith("_")]
        if ax.get_legend() is not None:
            legend += [t.get_text() for t in ax.get_legend().get_texts()]
    return drawn, legend


@pytest.mark.parametrize("deadline", [False, True])
def test_every_series_in_a_legend_every_axis_with_a_unit_and_the_slo_drawn(deadline: bool) -> None:
    phases = scenario_phases(get_scenario("demo"))
    fig = timeline_figure(_points(deadline), "demo", ttft_target_s=2.0, tbt_target_s=0.025 if deadline else None,
                          phases=phases)
    drawn, legend = _lines_and_legends(fig)
    assert drawn and sorted(drawn) == sorted(legend)
    assert "SLO: P99 TTFT ≤ 2 s" in legend
    for ax in fig.axes:
        assert UNIT.search(ax.get_ylabel()), ax.get_ylabel()
    ttft = next(ax for ax in fig.axes if ax.get_ylabel() == "P99 TTFT (s)")
    assert ttft.get_xlabel() == "time (s)"
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {p.label for p in phases} <= texts and len(phases) >= 3
    shaded = list(ttft.patches)  # one span per phase on each panel
    assert len(shaded) == len(phases)
    if deadline:  # Θ in its own panel, then P99 TBT against its target
        assert len(fig.axes) == 5  # 4 panels and the queue's twin axis
        assert fig.axes[0].get_ylabel().startswith("Θ") and "target 25 ms" in legend
        assert fig.axes[1].get_ylabel() == "P99 TBT (ms)"
    else:
        assert len(fig.axes) == 4 and fig.axes[0].get_ylabel().startswith("k")


def test_the_run_plot_has_no_api_address_and_no_float_noise(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from schedctl.bench.plots import display_label
    from schedctl.cli import review

    assert display_label("slai:theta_low=1.6685345973304284,theta_high=6.66853459733043") == \
        "slai:theta_low=1.669,theta_high=6.669"
    titles: list[str] = []
    monkeypatch.setattr(review, "plot_timeline", lambda points, path, title, **kw: titles.append(title))
    monkeypatch.setenv("SCHEDCTL_LOG__PATH", str(tmp_path / "d.jsonl"))
    from cli_support import run_cli  # noqa: F401  (same path as the command)

    from schedctl.cli import app
    from schedctl.cli.common import fail_cleanly

    config = Path(__file__).resolve().parents[1] / "config" / "sidecar.sim.toml"
    monkeypatch.setattr("sys.argv", ["schedctl", "run", "--config", str(config), "--fast", "--ticks", "3",
                                     "--no-compare", "--plot", str(tmp_path / "t.png")])
    monkeypatch.setenv("SCHEDCTL_API__PORT", "0")
    assert fail_cleanly(app) == 0
    assert titles and "http" not in titles[0] and "API" not in titles[0]


def test_a_selection_shows_only_the_phases_it_spans() -> None:
    phases = scenario_phases(get_scenario("demo"))
    late = [p for p in _points(False) if 200 <= p.time_s <= 390]
    fig = timeline_figure(late, "late", ttft_target_s=2.0, phases=phases)
    spanned = [ph for ph in phases if ph.end_s > 190 and ph.start_s < 390]
    assert 0 < len(spanned) < len(phases)
    assert {t.get_text() for t in fig.axes[0].texts} == {ph.label for ph in spanned}
    lo, hi = fig.axes[0].get_xlim()
    assert 185 <= lo <= 200 and 390 <= hi < 400
