"""Settings: TOML files with SCHEDCTL_* overrides; a bad file stops start-up naming the file, field and reason."""

from __future__ import annotations

import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from schedctl.files import InputFileError
from schedctl.policies.spec import parse_policy
from schedctl.settings import Settings, load_settings
from schedctl.sim.profiles import config_dir

SHIPPED = ["sidecar.sim.toml", "sidecar.sglang.toml", "sidecar.slai.toml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_settings_load_and_build_a_controller(name: str) -> None:
    s = load_settings(config_dir() / name)
    params = s.controller_params()
    assert params.objective.ttft_target_s == s.slo.ttft_p99_target_ms / 1000
    assert params.initial_policy == parse_policy(s.tuner.initial_policy)
    assert s.api.host == "127.0.0.1"


def test_sglang_example_chooses_the_sglang_adapter() -> None:
    s = load_settings(config_dir() / "sidecar.sglang.toml")
    assert s.engine.adapter == "sglang" and s.engine.sglang.base_url.startswith("http://")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[service]\nmode = "active"\ntick_interval_s = 5\n[api]\nport = 9000\n')
    monkeypatch.setenv("SCHEDCTL_SERVICE__MODE", "advisory")
    monkeypatch.setenv("SCHEDCTL_API__TOKEN", "tok")
    monkeypatch.setenv("SCHEDCTL_TUNER__ARMS", '[2, 4, "inf"]')
    monkeypatch.setenv("SCHEDCTL_CONFIG_DIR", str(config_dir()))  # another schedctl variable: not a field, ignored
    s = load_settings(f)
    assert s.service.mode == "advisory" and s.service.tick_interval_s == 5
    assert s.api.token == "tok" and s.api.port == 9000
    assert s.tuner.arms == [2, 4, "inf"]


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("[service]\ntick_interval_s = -1\n", "service.tick_interval_s", "greater than 0"),
        ("[service]\ntick_interval = 5\n", "service.tick_interval", "Extra inputs"),
        ("[tuner]\narms = [4, 2]\n", "tuner.arms", "increasing"),
        ('[tuner]\ninitial_policy = "klpm:0"\n', "tuner.initial_policy", "k must be >= 1"),
        ('[tuner]\nlearner = "magic"\n', "tuner", "unknown learner"),
        ("[tuner.learner_params]\nlearner_params = { exploration = -1 }\n", "tuner", "exploration"),
        ('[guard]\nsafe_policy = "sideways"\n', "guard.safe_policy", "unknown policy"),
        ('[engine]\nadapter = "vllm"\n', "engine.adapter", "'sim' or 'sglang'"),
        ('[api]\nport = 70000\n', "api.port", "less than or equal"),
        ("[slo\n", "TOML syntax", "line 1"),
    ],
)
def test_a_bad_file_names_the_file_the_field_and_the_reason(tmp_path: Path, text: str, field: str,
                                                           reason: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(InputFileError) as info:
        load_settings(f)
    msg = str(info.value)
    assert msg.startswith(str(f)) and field in msg and reason in msg


def test_a_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "s.toml"
    f.write_text("")
    monkeypatch.setenv("SCHEDCTL_SERVICE__TICK_INTERVAL_S", "soon")
    with pytest.raises(InputFileError, match=r"service\.tick_interval_s.*SCHEDCTL_SERVICE__TICK_INTERVAL_S"):
        load_settings(f)


def test_missing_file() -> None:
    with pytest.raises(InputFileError, match="file not found"):
        load_settings("/nonexistent/sidecar.toml")


def test_run_with_a_bad_file_stops_with_one_line_and_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[guard]\nmin_dwell_ticks = 0\n")
    out = subprocess.run([sys.executable, "-c", "from schedctl.cli import main; main()", "run", "--config", str(f)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(f) in out.stderr.replace("\n", "")
    assert "guard.min_dwell_ticks" in lines[0] and "greater than or equal to 1" in lines[0]


def _numeric_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        ann = info.annotation
        for t in (ann, *typing.get_args(ann)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from _numeric_fields(t, f"{prefix}{name}.")
        if ann in (int, float, int | None, float | None):
            yield prefix + name, info


def test_every_numeric_setting_has_a_finite_range() -> None:
    unbounded = []
    for name, info in _numeric_fields(Settings):
        kinds = {type(m).__name__ for m in info.metadata}
        if not ({"Ge", "Gt"} & kinds and {"Le", "Lt"} & kinds):
            unbounded.append(name)
    assert not unbounded, f"numeric settings without a lower and an upper bound: {unbounded}"


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e999"])
def test_an_infinite_tick_interval_is_refused_with_file_field_and_reason(tmp_path: Path, value: str) -> None:
    f = tmp_path / "s.toml"
    f.write_text(f"[service]\ntick_interval_s = {value}\n")
    with pytest.raises(InputFileError) as err:
        load_settings(f)
    assert err.value.where == "service.tick_interval_s" and str(f) in str(err.value)
    assert "finite" in err.value.reason or "less than" in err.value.reason or "greater than" in err.value.reason


def test_a_huge_k_is_refused_in_one_line_wherever_it_enters(tmp_path: Path) -> None:
    huge = "9" * 400
    for text, field in [(f'[tuner]\ninitial_policy = "klpm:{huge}"\n', "tuner.initial_policy"),
                        (f'[guard]\nsafe_policy = "klpm:{huge}"\n', "guard.safe_policy"),
                        (f"[tuner]\narms = [1, 2, {huge}]\n", "tuner.arms")]:
        f = tmp_path / "s.toml"
        f.write_text(text)
        with pytest.raises(InputFileError) as err:
            load_settings(f)
        assert err.value.where.startswith(field) and "k must be <= 1000000" in err.value.reason
        assert huge not in str(err.value)  # named by its length, not written out


def test_the_settings_defaults_are_the_controllers_own() -> None:
    from schedctl.controller.core import ControllerParams

    assert load_settings(None).controller_params() == ControllerParams()  # one default each, in one place


def test_everything_tunable_in_the_core_is_settable_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "s.toml"
    f.write_text("[objective]\ntail_quantile = 0.95\ncount_oldest_waiting = false\n"
                 "[tuner]\nlearner = \"linucb\"\nlearner_params = {}\nrate_scale_rps = 40.0\nqueue_scale = 16\n"
                 "[reconcile]\nunsupported_backoff_ticks = 3\n")
    monkeypatch.setenv("SCHEDCTL_SANITY__MAX_LATENCY_S", "600")
    p = load_settings(f).controller_params()
    assert (p.objective.tail_quantile, p.objective.count_oldest_waiting) == (0.95, False)
    assert (p.tuner.rate_scale_rps, p.tuner.queue_scale) == (40.0, 16.0)
    assert p.sanity.max_latency_s == 600 and p.reconcile.unsupported_backoff_ticks == 3


def test_a_value_another_table_sets_is_refused_where_it_does_not_belong(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text("[objective]\nttft_target_s = 5\n")
    with pytest.raises(InputFileError, match=r"slo\.ttft_p99_target_ms"):
        load_settings(f)
