#!/usr/bin/env bash
# Creates .venv-sglang: SGLang's real scheduler code importable on a CPU-only machine, with schedctl installed
# editable beside it so SGLang's plugin entry point (group sglang.srt.plugins) finds our plugin.
#
# Recipe (shared/SGLANG.md): the CPU build of torch 2.13.0, sglang 0.5.23 without its dependencies (they pull
# CUDA), then the few packages its scheduler imports. torchvision is NOT installed (it would upgrade torch and
# pull CUDA); tests/sglang_stubs/ holds an empty stand-in that the tests put on PYTHONPATH.
#
# Idempotent: a stamp records the versions and the hash of this script and pyproject.toml; when they match,
# nothing is installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-sglang
SGLANG_VERSION=0.5.23
TORCH_VERSION=2.13.0
PY="${PYTHON:-python3}"
STAMP="$VENV/.schedctl-setup-stamp"
want_stamp="sglang=$SGLANG_VERSION torch=$TORCH_VERSION $(cat "$0" pyproject.toml | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && [ -x "$VENV/bin/python" ]; then
  echo "setup-sglang-cpu: $VENV is up to date ($want_stamp)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

# torch first: with 2.13.0 in place, nothing below may replace it with a CUDA build.
pip_install "torch==$TORCH_VERSION"
pip_install --no-deps "sglang==$SGLANG_VERSION"
# What SGLang's scheduler, radix cache, plugin loader and HTTP entry points import (SGLANG.md), plus the
# test tools. triton must be the real package: torch imports triton.backends.
pip_install "torch==$TORCH_VERSION" numpy orjson psutil pybase64 requests triton packaging pillow starlette \
  msgspec pydantic pyzmq tqdm IPython aiohttp dill transformers "apache-tvm-ffi==0.1.11" sentencepiece \
  compressed-tensors gguf openai partial_json_parser setproctitle einops uvicorn fastapi \
  prometheus-client httpx structlog pytest pytest-timeout
# schedctl itself, editable and without its own dependency list (matplotlib, scikit-learn, ... are not
# needed inside the engine); this registers the [project.entry-points."sglang.srt.plugins"] entry.
pip_install --no-deps -e .

"$VENV/bin/python" - <<'EOF'
from importlib.metadata import entry_points, version
assert version("sglang") == "0.5.23", version("sglang")
assert version("torch").startswith("2.13.0"), version("torch")
names = [ep.name for ep in entry_points(group="sglang.srt.plugins")]
assert "schedctl" in names, f"schedctl's plugin entry point is not registered: {names}"
print("setup-sglang-cpu: sglang", version("sglang"), "torch", version("torch"), "plugins", names)
EOF
echo "$want_stamp" >"$STAMP"
