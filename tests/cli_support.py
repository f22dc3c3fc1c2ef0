"""Run `schedctl` in this process, through the installed command's own error handler (tests of the CLI)."""

from __future__ import annotations

import sys

import pytest

from schedctl.cli import app
from schedctl.cli.common import fail_cleanly


def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
            args: list[str]) -> tuple[int, str, str]:
    """`schedctl ARGS` in this process, through the same error handler as the installed command."""
    monkeypatch.setattr(sys, "argv", ["schedctl", *args])
    capsys.readouterr()
    code = fail_cleanly(app)  # an exception escaping here is a traceback the operator would see
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, args: list[str]) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (args, code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    assert "Traceback" not in err
    return lines[0]
