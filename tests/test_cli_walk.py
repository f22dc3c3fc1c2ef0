"""Every command and subcommand of `schedctl`, discovered from the typer app, walked with no arguments, --help,
an unknown option and a typical bad value: each answers with help or one `error:` line (exit 2), never a
traceback. A command added without a bad value below fails `test_every_command_has_a_bad_value_case`."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from cli_support import assert_one_error_line, run_cli

from schedctl.cli import app


def _walk(cmd: object, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], object]]:
    found = [(path, cmd)]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        found += _walk(sub, (*path, name))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = _walk(ROOT, ())
LEAVES = {path: cmd for path, cmd in COMMANDS if not hasattr(cmd, "commands")}
GROUPS = [path for path, cmd in COMMANDS if hasattr(cmd, "commands")]

# A typical mistake per command: each must end in one error line, fast (before any simulation or network).
BAD_VALUES: dict[tuple[str, ...], list[str]] = {
    ("bench", "adaptive"): ["--scenarios", "nosuch"],
    ("bench", "optimality"): ["--families", "nosuch"],
    ("calibrate",): ["--from", "{tmp}/no-such-steps.csv"],
    ("capacity",): ["--policies", ","],
    ("decisions",): ["{tmp}/no-such-log.jsonl"],
    ("load",): ["--time-scale", "0"],
    ("plan",): ["--router", "nosuch"],
    ("profile",): ["--out", "{tmp}/steps.csv", "--clock", "nosuch"],
    ("run",): ["--config", "{tmp}/no-such-settings.toml"],
    ("sim", "serve"): ["--time-scale", "-1"],
    ("sglang", "push"): ["klpm:0"],
    ("sglang", "serve"): ["--start-timeout-s", "0"],
    ("sglang", "show"): ["--url", "nonsense"],
    ("sglang", "tiny-model"): ["{tmp}/tiny", "--layers", "0"],
    ("simulate",): ["--num-requests", "-5"],
    ("sweep",): ["--num-requests", "0"],
    ("trace", "write"): ["{tmp}/t.jsonl", "--num-requests", "0"],
    ("whatif",): ["--trace", "{tmp}/no-such-trace.jsonl"],
    ("workloads",): ["extra-argument"],
}


def _ids(paths: object) -> list[str]:
    return [" ".join(p) or "schedctl" for p in paths]  # type: ignore[attr-defined]


def test_the_walk_finds_the_commands_and_every_one_has_a_bad_value_case() -> None:
    assert {("simulate",), ("run",), ("decisions",), ("sglang", "serve"), ("bench", "adaptive")} <= set(LEAVES)
    assert set(LEAVES) == set(BAD_VALUES), "give every command a typical bad value in BAD_VALUES"


@pytest.mark.parametrize("path", list(LEAVES), ids=_ids(LEAVES))
def test_every_command_answers_help_unknown_option_no_arguments_and_a_bad_value(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, monkeypatch, [*path, "--help"])
    assert code == 0 and "Usage" in out and not err.strip(), (path, code, err)
    shown = "".join(out.split())  # the text, whatever the wrapping
    for param in LEAVES[path].params:  # type: ignore[attr-defined]
        text = "".join((getattr(param, "help", None) or "").split())
        assert text in shown, f"help of {param.name} mangled: {text!r}"  # '[whatif]' eaten as markup, ':B:' an emoji

    cmd = LEAVES[path]
    if not cmd.context_settings.get("ignore_unknown_options"):  # type: ignore[attr-defined]  # `sglang serve` hands options it does not know to SGLang
        line = assert_one_error_line(*run_cli(capsys, monkeypatch, [*path, "--no-such-option"])[::2], [*path])
        assert f"schedctl {' '.join(path)}" in line and "--no-such-option" in line
    if any(p.required for p in cmd.params):  # type: ignore[attr-defined]
        line = assert_one_error_line(*run_cli(capsys, monkeypatch, list(path))[::2], [*path])
        assert "Missing" in line
    else:  # it runs with its defaults (a simulation, a server): parse only, it must take no arguments
        with cmd.make_context(path[-1], [], parent=None) as ctx:  # type: ignore[attr-defined]
            assert ctx.params is not None

    bad = [a.replace("{tmp}", str(tmp_path)) for a in BAD_VALUES[path]]
    assert_one_error_line(*run_cli(capsys, monkeypatch, [*path, *bad])[::2], bad)


@pytest.mark.parametrize("path", GROUPS, ids=_ids(GROUPS))
def test_every_group_prints_help_bare_and_one_line_for_an_unknown_command_or_option(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(capsys, monkeypatch, list(path))
    assert code == 0 and "Usage" in out and "Commands" in out and not err.strip(), (path, code, err)
    code, out, _ = run_cli(capsys, monkeypatch, [*path, "--help"])
    assert code == 0 and "Usage" in out
    for wrong in ("no-such-command", "--no-such-option"):
        line = assert_one_error_line(*run_cli(capsys, monkeypatch, [*path, wrong])[::2], [*path, wrong])
        assert wrong in line


def test_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from schedctl import __version__

    code, out, err = run_cli(capsys, monkeypatch, ["--version"])
    assert code == 0 and out.strip() == f"schedctl {__version__}" and not err


COUNTS = [(path, name) for path, cmd in LEAVES.items() for p in cmd.params  # type: ignore[attr-defined]
          for name in getattr(p, "opts", []) if name in ("--jobs", "--seeds", "--num-requests")]


@pytest.mark.parametrize(("path", "option"), COUNTS, ids=[f"{' '.join(p)} {o}" for p, o in COUNTS])
def test_a_count_of_zero_is_refused_not_ignored(path: tuple[str, ...], option: str,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    required = ["--config", str(tmp_path / "none.toml")] if path == ("run",) else []
    code, _, err = run_cli(capsys, monkeypatch, [*path, *required, option, "0"])
    assert option in assert_one_error_line(code, err, [*path, option, "0"])
