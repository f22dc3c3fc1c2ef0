"""The mistakes an operator makes, each one line naming where and what (issue 14): conflicting options, an empty
trace, an output path that cannot be written, a settings file's GPU or scenario, SCHEDCTL_* variables. And what a
command writes: its path printed, its mode the user's umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_support import assert_one_error_line, run_cli

Cap = pytest.CaptureFixture[str]
MP = pytest.MonkeyPatch


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: MP) -> None:
    monkeypatch.chdir(tmp_path)  # a command that should have failed writes nothing into the checkout


def _error(capsys: Cap, monkeypatch: MP, *args: str) -> str:
    code, _out, err = run_cli(capsys, monkeypatch, list(args))
    return assert_one_error_line(code, err, list(args))


def _trace(tmp_path: Path, capsys: Cap, monkeypatch: MP, n: int = 12) -> Path:
    path = tmp_path / "t.jsonl"
    code, out, err = run_cli(capsys, monkeypatch, ["trace", "write", str(path), "--num-requests", str(n),
                                                   "--rate", "4"])
    assert code == 0, err
    assert str(path) in out
    return path


@pytest.mark.parametrize(("extra", "words"), [
    (["--rate", "5"], ["--rate with --trace"]),
    (["--workload", "gsp"], ["--workload with --trace"]),
    (["--arrival", "regular", "--duration-s", "3"], ["--arrival, --duration-s with --trace"]),
])
def test_options_a_trace_already_answers_are_refused(tmp_path: Path, capsys: Cap, monkeypatch: MP,
                                                     extra: list[str], words: list[str]) -> None:
    trace = _trace(tmp_path, capsys, monkeypatch)
    line = _error(capsys, monkeypatch, "simulate", "--trace", str(trace), *extra)
    assert all(w in line for w in words), line


def test_num_requests_takes_the_first_n_of_a_trace_and_bounds_a_workload_file(tmp_path: Path, capsys: Cap,
                                                                            monkeypatch: MP) -> None:
    trace = _trace(tmp_path, capsys, monkeypatch)
    code, out, err = run_cli(capsys, monkeypatch, ["simulate", "--trace", str(trace), "--num-requests", "5",
                                                   "--json"])
    assert code == 0, err
    assert json.loads(out)["requests"] == 5
    wl = tmp_path / "w.toml"
    wl.write_text('num_requests = 40\nrate = 5\n[workload]\nname = "gsp"\n')
    code, out, err = run_cli(capsys, monkeypatch, ["simulate", "--workload-file", str(wl), "--num-requests", "7",
                                                   "--json"])
    assert code == 0, err
    assert json.loads(out)["requests"] == 7
    line = _error(capsys, monkeypatch, "simulate", "--workload-file", str(wl), "--rate", "9")
    assert "--rate with --workload-file" in line


@pytest.mark.parametrize("command", [["simulate"], ["load", "--url", "http://127.0.0.1:9"]])
def test_an_empty_trace_is_an_error_not_an_empty_table(tmp_path: Path, capsys: Cap, monkeypatch: MP,
                                                       command: list[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    line = _error(capsys, monkeypatch, *command, "--trace", str(empty))
    assert str(empty) in line and "no requests" in line


@pytest.mark.parametrize("command", [["simulate", "--num-requests", "5"], ["decisions", "LOG"],
                                     ["sweep", "--rates", "5", "--num-requests", "5"]])
def test_a_plot_whose_folder_is_a_file_is_refused_before_any_work(tmp_path: Path, capsys: Cap, monkeypatch: MP,
                                                                  command: list[str]) -> None:
    (tmp_path / "afile").write_text("x")
    log = tmp_path / "log.jsonl"
    log.write_text("")
    args = [str(log) if a == "LOG" else a for a in command]
    line = _error(capsys, monkeypatch, *args, "--plot", str(tmp_path / "afile" / "p.png"))
    assert "--plot" in line and "afile is a file" in line


def test_written_files_get_the_users_umask_and_their_paths_are_printed(tmp_path: Path, capsys: Cap,
                                                                     monkeypatch: MP) -> None:
    old = os.umask(0o022)
    try:
        plot, recs = tmp_path / "out" / "p.png", tmp_path / "out" / "r.jsonl"
        code, out, err = run_cli(capsys, monkeypatch, ["simulate", "--num-requests", "20", "--plot", str(plot),
                                                       "--requests-out", str(recs), "--json"])
        assert code == 0, err
        json.loads(out)  # stdout stays JSON: the paths go to stderr
        assert str(plot) in err and str(recs) in err
        for f in (plot, recs):
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, oct(f.stat().st_mode)
    finally:
        os.umask(old)


def _settings(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "mine.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize(("text", "field", "words"), [
    ('[engine.sim]\ngpu = "h900"\n', "engine.sim.gpu", ["'h900'", "h100-sxm"]),
    ('[engine.sim]\nmodel = "gpt-9"\n', "engine.sim.model", ["'gpt-9'"]),
    ('[engine.sim]\nscenario = "nosuch"\n', "engine.sim.scenario", ["'nosuch'", "scenarios.toml"]),
])
def test_a_bad_name_in_a_settings_file_blames_that_file_and_field(tmp_path: Path, capsys: Cap, monkeypatch: MP,
                                                                  text: str, field: str, words: list[str]) -> None:
    f = _settings(tmp_path, text)
    for command in (["run", "--config", str(f), "--fast", "--ticks", "1", "--no-compare"],
                    ["bench", "adaptive", "--config", str(f), "--scenarios", "demo"]):
        line = _error(capsys, monkeypatch, *command)
        assert line.startswith(f"error: {f}: {field}: "), line
        assert "--gpu" not in line and all(w in line for w in words), line


@pytest.mark.parametrize(("name", "value", "words"), [
    ("SCHEDCTL_TUNNER__ARMS", "[1, 2]", ["$SCHEDCTL_TUNNER__ARMS", "no settings table 'tunner'", "tuner"]),
    ("SCHEDCTL_TUNER__ARMS", "[1, 2", ["$SCHEDCTL_TUNER__ARMS", "not valid JSON"]),
    ("SCHEDCTL_TUNER__LEARNER_PARAMS", "{\"alpha\":", ["$SCHEDCTL_TUNER__LEARNER_PARAMS", "not valid JSON"]),
])
def test_a_bad_environment_variable_is_named_with_the_reason(tmp_path: Path, capsys: Cap, monkeypatch: MP,
                                                             name: str, value: str, words: list[str]) -> None:
    monkeypatch.setenv(name, value)
    line = _error(capsys, monkeypatch, "run", "--config", str(_settings(tmp_path, "")), "--ticks", "1")
    assert all(w in line for w in words), line


def test_trace_write_saves_a_scenario_that_simulate_replays_the_same(tmp_path: Path, capsys: Cap,
                                                                    monkeypatch: MP) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        code, _out, err = run_cli(capsys, monkeypatch, ["trace", "write", str(path), "--scenario", "stationary-low",
                                                       "--seed", "3"])
        assert code == 0, err
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0  # same seed, same trace
    line = _error(capsys, monkeypatch, "trace", "write", str(a), "--scenario", "demo", "--rate", "3")
    assert "--rate with --scenario" in line


@pytest.mark.parametrize(("arms", "words"), [('["infinity"]', ["at least two arms"]),
                                             ('[1, "x"]', ["'x'", '"inf"'])])
def test_a_bad_arm_names_the_field_once(tmp_path: Path, capsys: Cap, monkeypatch: MP, arms: str,
                                        words: list[str]) -> None:
    f = _settings(tmp_path, f"[tuner]\narms = {arms}\n")
    line = _error(capsys, monkeypatch, "run", "--config", str(f), "--ticks", "1")
    assert line.startswith(f"error: {f}: tuner.arms: ") and "arms.arms" not in line
    assert all(w in line for w in words), line


def test_sglang_serve_without_sglang_installed_says_how_to_get_it(capsys: Cap, monkeypatch: MP) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sglang" else real(name, *a))
    line = _error(capsys, monkeypatch, "sglang", "serve", "--", "--model-path", "m")
    assert "not installed" in line and "setup-sglang-cpu.sh" in line
