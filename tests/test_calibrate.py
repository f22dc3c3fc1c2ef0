"""Calibration inputs (step CSV, SGLang server log), the profile TOML, and the calibrate / profile commands."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from schedctl.cli import app
from schedctl.cli.common import fail_cleanly, hardware
from schedctl.files import InputFileError
from schedctl.sim.calibrate import (
    StepRow,
    evaluate_holdout,
    holdout_split,
    read_rows,
    read_sglang_log,
    read_steps_csv,
    write_steps_csv,
)
from schedctl.sim.profiles import load_gpu, load_model
from schedctl.sim.step_time import StepTimeModel, StepTimeProfile

TRUTH = StepTimeProfile.from_datasheet(load_gpu("h100-sxm"), load_model("llama-3.1-8b"))
HEADER = "prefill_tokens,prefill_context_tokens,decode_seqs,decode_context_tokens,seconds"


def synthetic_rows(noise: float = 0.02, seed: int = 0) -> list[StepRow]:
    rng = np.random.default_rng(seed)
    model = StepTimeModel(TRUTH)
    shapes = [(e, c, 0, 0) for e in (256, 1024, 4096) for c in (0, 2048, 8192)]
    shapes += [(0, 0, b, b * c) for b in (1, 16, 64, 256) for c in (512, 4096)]
    shapes += [(e, 0, b, b * 1024) for e in (512, 2048) for b in (8, 64)]
    rows = []
    for e, c, b, ctx in shapes:
        row = StepRow(prefill_tokens=e, prefill_context_tokens=c, decode_seqs=b, decode_context_tokens=ctx, seconds=1)
        rows.append(row.model_copy(update={"seconds": model.step_s(row.batch()) * (1 + noise * rng.standard_normal())}))
    return rows


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["schedctl", *args])
    return fail_cleanly(app)


# --- step CSV -------------------------------------------------------------------------------------------------


def test_csv_round_trip_with_comments_any_column_order_and_default_prefill_seqs(tmp_path: Path) -> None:
    rows = synthetic_rows()
    path = tmp_path / "steps.csv"
    write_steps_csv(path, rows, comments=["device: test"])
    assert path.read_text().startswith("# device: test\n")
    back = read_steps_csv(path)
    assert [r.model_dump(exclude={"seconds"}) for r in back] == [r.model_dump(exclude={"seconds"}) for r in rows]
    np.testing.assert_allclose([r.seconds for r in back], [r.seconds for r in rows], rtol=1e-8)

    other = tmp_path / "other.csv"
    other.write_text("\n# a note\nseconds,decode_seqs,decode_context_tokens,prefill_context_tokens,prefill_tokens\n"
                     "0.5,0,0,128,1024\n\n# another\n0.01,8,800,0,0\n")
    got = read_steps_csv(other)
    assert got[0].prefill_tokens == 1024 and got[0].prefill_context_tokens == 128 and got[0].prefill_seqs == 1
    assert got[1].decode_seqs == 8 and got[1].seconds == 0.01


@pytest.mark.parametrize(("body", "where", "reason"), [
    ("prefill_tokens,decode_seqs,decode_context_tokens,seconds\n1,0,0,0.1\n", "line 2 (header)",
     "missing column(s) prefill_context_tokens"),
    (HEADER + ",gpu\n", "line 2 (header)", "unknown column(s) gpu"),
    (HEADER + "\n128,0,0,0,0.1\n128,0,0,0\n", "line 4", "4 fields, the header has 5"),
    (HEADER + "\n128,0,0,0,0.1\n128,0,0,0,fast\n", "line 4, column seconds", "'fast' is not a number of seconds"),
    (HEADER + "\n12.5,0,0,0,0.1\n", "line 3, column prefill_tokens", "'12.5' is not a whole number"),
    (HEADER + "\n128,0,-4,0,0.1\n", "line 3, column decode_seqs", "greater than or equal to 0"),
    (HEADER + "\n128,0,0,0,0\n", "line 3, column seconds", "greater than 0"),
    (HEADER + "\n128,0,0,0,nan\n", "line 3, column seconds", "'nan' is not a number of seconds"),
    (HEADER + "\n0,0,0,0,0.1\n", "line 3", "prefill_tokens > 0 or decode_seqs > 0"),
    (HEADER + "\n", "", "no step rows"),
    ("# only a comment\n", "", "empty"),
])
def test_a_malformed_csv_names_the_line_and_column(tmp_path: Path, body: str, where: str, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("# measured by hand\n" + body)
    with pytest.raises(InputFileError) as err:
        read_steps_csv(path)
    assert err.value.where == where
    assert reason in err.value.reason
    assert str(path) in str(err.value)


# --- SGLang log -----------------------------------------------------------------------------------------------

def prefill(it: int | None, seqs: int, new: int, cached: int, tput: float, rank: str = "TP0", waiting: int = 7) -> str:
    """A Prefill line as SGLang 0.5.23 prints it (metrics_reporter.report_prefill_stats)."""
    iter_msg = f" [{it}]" if it is not None else ""
    return (f"[2026-01-05 10:00:01 {rank}] Prefill batch{iter_msg}, #new-seq: {seqs}, #new-token: {new}, "
            f"#cached-token: {cached}, token usage: 0.12, #running-req: 3, #queue-req: {waiting}, #pending-token: 0, "
            f"cuda graph: False, input throughput (token/s): {tput:.2f}")


def decode(it: int | None, running: int, tokens: int, tput: float, rank: str = "TP0") -> str:
    """A Decode line as SGLang 0.5.23 prints it (metrics_reporter.report_decode_stats)."""
    iter_msg = f" [{it}]" if it is not None else ""
    return (f"[2026-01-05 10:00:02 {rank}] Decode batch{iter_msg}, #running-req: {running}, #token: {tokens}, "
            f"token usage: 0.05, cuda graph: True, gen throughput (token/s): {tput:.2f}, #queue-req: 0")


SERVER_LOG = [
    "[2026-01-05 10:00:00] server_args=ServerArgs(model_path='meta-llama/Llama-3.1-8B', ...)",
    prefill(1, 1, 512, 0, 1000.0),  # first prefill: its interval starts before the log
    prefill(2, 2, 4096, 1024, 40960.0),  # previous forward was prefill 1: 4096 / 40960 = 0.1 s
    decode(42, 3, 5000, 300.0),  # its interval holds prefill steps
    decode(82, 3, 5120, 150.0),  # pure decode: 3 / 150 = 0.02 s per step
    'INFO:     127.0.0.1:5000 - "POST /generate HTTP/1.1" 200 OK',
    decode(122, 2, 5200, 100.0),  # 0.02 s
    prefill(130, 1, 256, 0, 2560.0),  # forward 129 was a decode step: skipped
    prefill(131, 1, 2048, 256, 20480.0),  # 0.1 s
    decode(1, 4, 900, 400.0, rank="DP1 TP0"),  # first decode line of that rank
    decode(41, 4, 1000, 200.0, rank="DP1 TP0"),  # 0.02 s
    prefill(None, 1, 128, 0, 1280.0),  # no iteration numbers: cannot tell what ran in between
]


def test_sglang_log_rows_are_derived_from_throughputs(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_text("\n".join(SERVER_LOG) + "\n")
    got = read_sglang_log(path)
    assert (got.prefill_rows, got.decode_rows) == (2, 3)
    by_kind = [(r.prefill_tokens, r.prefill_context_tokens, r.prefill_seqs, r.decode_seqs, r.decode_context_tokens)
               for r in got.rows]
    assert by_kind == [(4096, 1024, 2, 0, 0), (0, 0, 1, 3, 5120), (0, 0, 1, 2, 5200), (2048, 256, 1, 0, 0),
                       (0, 0, 1, 4, 1000)]
    np.testing.assert_allclose([r.seconds for r in got.rows], [0.1, 0.02, 0.02, 0.1, 0.02])
    assert got.skipped["first decode line of the rank"] == 1
    assert got.skipped["decode interval included prefill steps"] == 1
    assert got.skipped["previous forward step was not a logged prefill"] == 2
    assert sum(n for r, n in got.skipped.items() if "SGLANG_LOG_FORWARD_ITERS=1" in r) == 1


@pytest.mark.parametrize(("bad", "reason"), [
    (decode(200, 3, 5300, 100.0).replace("#running-req: 3", "#running-req: three"), "'#running-req': 'three'"),
    (decode(200, 3, 5300, 100.0).replace(", gen throughput (token/s): 100.00", ""), "without 'gen throughput"),
    (prefill(200, 1, 64, 0, 640.0).replace("#cached-token: 0", "#cached-token: -5"), "is negative"),
    (prefill(200, 1, 64, 0, 640.0).replace("#queue-req: 7", "#queue-req: many"), "'#queue-req': 'many'"),
    ("[TP0] Decode batch, #running-req: 3", "unknown format"),
])
def test_a_malformed_sglang_line_is_reported_with_its_number(tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "server.log"
    path.write_text("\n".join([*SERVER_LOG[:5], bad, *SERVER_LOG[5:]]) + "\n")
    with pytest.raises(InputFileError) as err:
        read_sglang_log(path)
    assert err.value.where == "line 6"
    assert reason in err.value.reason


def test_a_prefill_after_one_that_left_nothing_waiting_is_not_timed(tmp_path: Path) -> None:
    """One request at a time: prefill [101] leaves nothing waiting, the server idles until the next request, whose
    prefill is [102]; its throughput counts the idle time."""
    path = tmp_path / "server.log"
    path.write_text("\n".join([prefill(100, 1, 512, 0, 5000.0), prefill(101, 1, 512, 0, 5000.0, waiting=0),
                               prefill(102, 1, 512, 0, 1500.0, waiting=1), prefill(103, 1, 512, 0, 5000.0)]) + "\n")
    got = read_sglang_log(path)
    np.testing.assert_allclose([r.seconds for r in got.rows], [512 / 5000.0, 512 / 5000.0])  # [101] and [103]
    assert got.skipped["nothing waited after the previous prefill (idle time may precede it)"] == 1


def test_a_log_without_usable_lines_says_why(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_text("\n".join([SERVER_LOG[0], prefill(None, 1, 128, 0, 1280.0), decode(None, 2, 300, 20.0)]) + "\n")
    with pytest.raises(InputFileError, match="SGLANG_LOG_FORWARD_ITERS=1"):
        read_rows(path)


# --- hold-out -------------------------------------------------------------------------------------------------

def test_holdout_split_is_seeded_disjoint_and_complete() -> None:
    train, held = holdout_split(20, 0.25, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and sorted([*train, *held]) == list(range(20))
    assert np.array_equal(held, holdout_split(20, 0.25, seed=3)[1])
    assert not np.array_equal(held, holdout_split(20, 0.25, seed=4)[1])


def test_held_back_rows_are_predicted_within_the_noise() -> None:
    held, report = evaluate_holdout(synthetic_rows(noise=0.02), 0.3, seed=0, source="t")
    assert len(held.rows) == 6 and report.rows == 21 - 6
    assert held.ape.mean() < 0.05


# --- the commands ---------------------------------------------------------------------------------------------

def test_calibrate_writes_a_profile_the_simulator_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    steps, out = tmp_path / "steps.csv", tmp_path / "profile.toml"
    write_steps_csv(steps, synthetic_rows(noise=0.02))
    rc = run_cli(monkeypatch, "calibrate", "--from", str(steps), "--out", str(out), "--gpu", "h100-sxm",
                 "--model", "llama-3.1-8b", "--holdout", "0.2", "--json")
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    written = tomllib.loads(out.read_text())
    assert written["step_time"] == doc["step_time"]
    fit = written["fit"]
    assert fit["rows"] == 21 and fit["mape"] < 0.03 and fit["worst_ape"] < 0.1
    assert fit["holdout_rows"] == len(doc["holdout"]) == 4 and fit["holdout_mape"] < 0.05
    assert fit["gpu"] == "NVIDIA H100 SXM 80GB" and fit["model"] == "Llama-3.1-8B"
    # the rows were made with the datasheet's efficiencies: the fit finds them again
    assert fit["compute_efficiency"] == pytest.approx(0.55, rel=0.05)
    assert fit["memory_efficiency"] == pytest.approx(0.80, rel=0.05)
    # `schedctl simulate --step-profile` reads it through the shared loader
    hw = hardware("h100-sxm", "llama-3.1-8b", out, None)
    assert hw.step_profile is not None
    assert hw.step_profile.s_per_new_token == pytest.approx(TRUTH.s_per_new_token, rel=0.05)


def test_calibrate_from_an_sglang_log_prints_what_it_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "server.log"
    path.write_text("\n".join(SERVER_LOG) + "\n")
    assert run_cli(monkeypatch, "calibrate", "--from", str(path), "--out", str(tmp_path / "p.toml")) == 0
    out = capsys.readouterr().out
    assert "skipped 1 batch line(s): first decode line of the rank" in out
    assert "fit error over all rows: MAPE" in out
    assert tomllib.loads((tmp_path / "p.toml").read_text())["fit"]["rows"] == 5


def test_calibrate_bad_input_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    steps = tmp_path / "steps.csv"
    steps.write_text(HEADER + "\n128,0,0,0,0.1\n128,0,0,0,slow\n")
    out = tmp_path / "p.toml"
    assert run_cli(monkeypatch, "calibrate", "--from", str(steps), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "line 3, column seconds" in err and "steps.csv" in err
    assert not out.exists()
    write_steps_csv(steps, synthetic_rows()[:3])
    assert run_cli(monkeypatch, "calibrate", "--from", str(steps)) == 2
    assert "at least 4" in capsys.readouterr().err
    assert run_cli(monkeypatch, "calibrate", "--from", str(steps), "--holdout", "1.5") == 2
    assert run_cli(monkeypatch, "calibrate", "--from", str(steps), "--gpu", "nope", "--model", "llama-3.1-8b") == 2


def test_profile_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    assert run_cli(monkeypatch, "profile", "--out", str(tmp_path / "s.csv")) == 2
    err = capsys.readouterr().err
    assert "pip install 'schedctl[profile]'" in err
    assert not (tmp_path / "s.csv").exists()
