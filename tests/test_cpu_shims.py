"""The CPU shims (stand-ins for sgl_kernel and torchvision) and what `schedctl sglang serve --cpu` adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedctl.engine_adapter.sglang.cpu_shims import SHIM_ROOTS, missing_modules, pythonpath_for_missing, unavailable
from schedctl.engine_adapter.sglang.launcher import CPU_ENV, build_command, flag_value


def test_a_shim_fails_loudly_naming_itself() -> None:
    fn = unavailable("sgl_kernel", "copy_all_layer_kv_cache_cpu")
    with pytest.raises(RuntimeError, match=r"sgl_kernel\.copy_all_layer_kv_cache_cpu is a stand-in"):
        fn(1, 2)


def test_only_modules_missing_for_real_get_a_shim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SHIM_ROOTS["torchvision"]))  # a shim already importable is not the real one
    assert set(missing_modules()) == {"sgl_kernel", "torchvision"}
    real = tmp_path / "site"
    (real / "torchvision").mkdir(parents=True)
    (real / "torchvision" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(real))
    assert missing_modules() == ["sgl_kernel"]
    assert pythonpath_for_missing() == [str(SHIM_ROOTS["sgl_kernel"])]


def test_cpu_flags_and_environment_are_added_and_the_operators_stand() -> None:
    argv, env = build_command(["--", "--model-path", "m", "--max-total-tokens", "4096"],
                              environ={"OMP_NUM_THREADS": "2", "PYTHONPATH": "/mine"}, cpu=True)
    assert flag_value(argv, "--device") == "cpu" and flag_value(argv, "--attention-backend") == "torch_native"
    assert "--disable-cuda-graph" in argv and "--disable-overlap-schedule" in argv
    assert argv.count("--max-total-tokens") == 1 and flag_value(argv, "--max-total-tokens") == "4096"
    assert flag_value(argv, "--host") == "127.0.0.1"
    assert env["SGLANG_USE_CPU_ENGINE"] == "1" and env["OMP_NUM_THREADS"] == "2"  # the operator's value stands
    assert env["PYTHONPATH"].split(":")[-1] == "/mine"
    assert set(env["PYTHONPATH"].split(":")[:-1]) == {str(SHIM_ROOTS[m]) for m in missing_modules()}


def test_without_cpu_nothing_cpu_specific_is_added() -> None:
    argv, env = build_command(["--model-path", "m"], environ={})
    assert "--device" not in argv and "--attention-backend" not in argv
    assert not set(CPU_ENV) & set(env) and "PYTHONPATH" not in env
