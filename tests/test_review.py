"""`schedctl decisions` (cli/review.py): one line per tick that fits 80 columns, a detail view per tick, --since and
--last for the table, the JSON and the plot alike, and the rule that acted in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import assert_one_error_line, run_cli

from schedctl.cli import review
from schedctl.controller.guard import CHAIN

Cap = pytest.CaptureFixture[str]
MP = pytest.MonkeyPatch
CONFIG = Path(__file__).resolve().parents[1] / "config" / "sidecar.sim.toml"


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's scenario for 60 ticks, through `schedctl run` (the same seed each time)."""
    return _run_log(tmp_path_factory.mktemp("demo") / "decisions.jsonl", CONFIG)


@pytest.fixture(scope="module")
def slai_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SLAI demo (the DeadlineTuner moves Θ) for 60 ticks."""
    return _run_log(tmp_path_factory.mktemp("slai") / "decisions.jsonl", CONFIG.with_name("sidecar.slai.toml"))


def _run_log(log: Path, config: Path) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("SCHEDCTL_LOG__PATH", str(log))
    mp.setenv("SCHEDCTL_API__ENABLED", "false")
    try:
        from schedctl.cli import app

        mp.setattr("sys.argv", ["schedctl", "run", "--config", str(config), "--fast", "--ticks", "60",
                                "--no-compare", "--fresh"])
        from schedctl.cli.common import fail_cleanly

        assert fail_cleanly(app) == 0
    finally:
        mp.undo()
    return log


def _lines(capsys: Cap, monkeypatch: MP, columns: int, *args: str) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = run_cli(capsys, monkeypatch, ["decisions", *args])
    assert code == 0, err
    return out.splitlines()


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_one_line_per_tick_that_fits_the_terminal(demo_log: Path, capsys: Cap, monkeypatch: MP,
                                                  columns: int) -> None:
    lines = _lines(capsys, monkeypatch, columns, str(demo_log))
    assert max(len(ln) for ln in lines) <= columns
    assert len(lines) == 2 + 60  # a title, a header, one line per tick
    ticks = [int(ln.split()[0]) for ln in lines[2:]]
    assert ticks == list(range(1, 61))


def test_the_slai_log_fits_and_shows_the_knob_it_moves(slai_log: Path, capsys: Cap, monkeypatch: MP) -> None:
    lines = _lines(capsys, monkeypatch, 80, str(slai_log))
    assert max(len(ln) for ln in lines) <= 80 and len(lines) == 2 + 60
    assert all(" slai Θ=" in ln and "deadline tuner: Θ " in ln for ln in lines[2:])


def test_the_rule_that_acted_is_named_in_words_for_every_guard_rule() -> None:
    assert {rule.name for rule in CHAIN} <= set(review.RULE_WORDS), "say in words what each guard rule does"


def test_tick_detail_shows_the_whole_detail_and_the_rule(demo_log: Path, capsys: Cap, monkeypatch: MP) -> None:
    from schedctl.controller.decision_log import read_decisions

    decisions, _ = read_decisions(demo_log)
    d = max(decisions, key=lambda x: len(x.detail))  # the longest detail: it must not be cut
    lines = _lines(capsys, monkeypatch, 80, str(demo_log), "--tick", str(d.tick_id))
    assert max(len(ln) for ln in lines) <= 80
    text = " ".join(" ".join(ln.split()) for ln in lines)
    assert " ".join(d.detail.split()) in text
    assert review.acted(d) in text and f"rule {d.rule}" in text


def test_since_and_last_select_the_same_ticks_for_table_json_and_plot(demo_log: Path, capsys: Cap, monkeypatch: MP,
                                                                     tmp_path: Path) -> None:
    plotted: list[Any] = []
    monkeypatch.setattr(review, "plot_timeline", lambda points, path, title, **_: plotted.extend(points))
    args = [str(demo_log), "--since", "200", "--last", "15"]
    table = _lines(capsys, monkeypatch, 80, *args)[2:]
    code, out, err = run_cli(capsys, monkeypatch, ["decisions", *args, "--json", "--plot", str(tmp_path / "p.png")])
    assert code == 0, err
    shown = json.loads(out)
    assert [d["tick_id"] for d in shown] == [int(ln.split()[0]) for ln in table] == list(range(46, 61))
    assert [p.time_s for p in plotted] == [d["time_s"] for d in shown]
    assert str(tmp_path / "p.png") in err  # the path, on stderr beside JSON


def test_time_of_a_real_engine_log_as_iso_and_a_simulated_one_refused(demo_log: Path, capsys: Cap,
                                                                    monkeypatch: MP, tmp_path: Path) -> None:
    wall = tmp_path / "wall.jsonl"
    epoch = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    with wall.open("w") as fh:
        for line in demo_log.read_text().splitlines():
            obj = json.loads(line)
            obj["time_s"] += epoch
            obj["window"]["start_s"] += epoch
            obj["window"]["end_s"] += epoch
            fh.write(json.dumps(obj) + "\n")
    lines = _lines(capsys, monkeypatch, 80, str(wall), "--time", "iso", "--last", "1")
    assert "started 2027-01-15T08:00:00Z" in lines[0] and lines[2].split()[1] == "08:10:00"
    lines = _lines(capsys, monkeypatch, 80, str(wall), "--since", "2027-01-15T08:09:50")
    assert [ln.split()[0] for ln in lines[2:]] == ["59", "60"]
    code, _, err = run_cli(capsys, monkeypatch, ["decisions", str(demo_log), "--time", "iso"])
    assert "simulated" in assert_one_error_line(code, err, [])


def test_a_tick_not_in_the_selection_is_one_error_line(demo_log: Path, capsys: Cap, monkeypatch: MP) -> None:
    code, _, err = run_cli(capsys, monkeypatch, ["decisions", str(demo_log), "--last", "5", "--tick", "3"])
    assert "--tick 3" in assert_one_error_line(code, err, [])


def test_the_live_view_fits_80_columns_says_what_acted_and_counts_time_from_the_start(demo_log: Path) -> None:
    import io

    from rich.console import Console

    from schedctl.cli.sidecar import Display
    from schedctl.controller.decision import Decision
    from schedctl.controller.decision_log import read_decisions

    decisions, _ = read_decisions(demo_log)
    epoch = 1_800_000_000.0  # as a real engine's log: epoch seconds
    shifted = [Decision.model_validate({**d.model_dump(), "time_s": d.time_s + epoch, "window": {
        **d.window.model_dump(), "start_s": d.window.start_s + epoch, "end_s": d.window.end_s + epoch}})
        for d in decisions]
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, color_system=None)
    display = Display(console, "schedctl · SGLang at http://127.0.0.1:30000 · every 10 s\nAPI http://127.0.0.1:8787",
                      None)
    for d in shifted:
        display(d)  # no Live here: each also printed as a plain line
    console.print(display.render())  # what a terminal shows
    lines = out.getvalue().splitlines()
    assert max(len(ln) for ln in lines) <= 80, "\n".join(ln for ln in lines if len(ln) > 80)
    assert lines[1].startswith("API ") and lines[2].startswith("tick 60 ")  # the header does not wrap ...
    assert len(lines) == 3 + 4 + len(display.rows)  # ... nor any row: borders, the header and one line each
    assert any(" 600 " in ln for ln in lines) and not any("1800000" in ln for ln in lines)
    assert any(review.acted(shifted[-1])[:10] in ln for ln in lines)


def test_held_or_fallen_back_on_stale_data_says_why(demo_log: Path) -> None:
    from schedctl.controller.decision_log import read_decisions

    d = read_decisions(demo_log)[0][0]
    window = d.window.model_copy(update={"stale": True, "stale_reason": "engine unreachable: connection refused"})
    held = d.model_copy(update={"reason": "guard", "rule": "stale", "window": window})
    fallback = d.model_copy(update={"reason": "fallback", "rule": "stale", "window": window})
    assert "connection refused" in review.acted(held) and review.acted(held).startswith("held")
    assert "connection refused" in review.acted(fallback) and review.acted(fallback).startswith("fallback")


def test_the_plain_tick_line_names_the_stale_cause_and_counts_from_the_start(demo_log: Path, capsys: Cap) -> None:
    from rich.console import Console

    from schedctl.cli.sidecar import Display
    from schedctl.controller.decision_log import read_decisions

    d = read_decisions(demo_log)[0][1]
    epoch = 1_800_000_000.0
    window = d.window.model_copy(update={"stale": True, "stale_reason": "engine unreachable: connection refused",
                                         "start_s": d.window.start_s + epoch, "end_s": d.window.end_s + epoch})
    display = Display(Console(width=80), "t", None)
    capsys.readouterr()
    display(d.model_copy(update={"reason": "fallback", "window": window, "time_s": d.time_s + epoch}))
    line = capsys.readouterr().out
    assert "stale='engine unreachable: connection refused'" in line and " t=10 " in line
