#!/usr/bin/env bash
# Creates .venv-sglang: a real SGLang 0.5.23 server that runs on a CPU-only machine (and its scheduler code for
# the plugin tests), with schedctl installed editable beside it so SGLang's plugin entry point (group
# sglang.srt.plugins) finds our plugin.
#
# Recipe (docs/sglang-cpu.md): the CPU build of torch 2.13.0, sglang 0.5.23 without its dependencies (they pull
# CUDA), the packages its scheduler imports, then those its HTTP server imports. torchvision and sgl_kernel are
# NOT installed (no CPU wheels that match): schedctl/engine_adapter/sglang/cpu_shims/ holds their stand-ins, put
# on PYTHONPATH by `schedctl sglang serve --cpu` and by the tests.
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
pip_install() {
  # Drop two kinds of expected noise: notes about the machine's local indexes that lack a name, and the
  # resolver's list of sglang requirements left out on purpose (installed --no-deps: they pull CUDA).
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v -e "is ignored: it is neither" \
    -e "^sglang $SGLANG_VERSION requires" -e "dependency resolver does not currently take into account" >&2)
}

# torch first: with 2.13.0 (CPU) in place, nothing below may replace it with a CUDA build. SGLang 0.5.23 asks
# for torch 2.14.1; its scheduler, radix cache and plugin code run on 2.13.0.
pip_install "torch==$TORCH_VERSION"
pip_install --no-deps "sglang==$SGLANG_VERSION"
# What SGLang's scheduler, radix cache, plugin loader, metrics and server args import (docs/sglang-cpu.md), at the
# versions sglang 0.5.23 pins where it pins one. triton must be the real package: torch imports triton.backends.
pip_install "torch==$TORCH_VERSION" numpy orjson psutil pybase64 requests triton packaging pillow starlette \
  msgspec pydantic pyzmq tqdm IPython aiohttp dill "transformers==5.19.0" "tokenizers==0.23.2" \
  "apache-tvm-ffi==0.1.11" "sentencepiece==0.2.1" "compressed-tensors==0.18.0" gguf "openai==2.8.0" \
  partial_json_parser setproctitle einops "uvicorn>=0.51" fastapi "prometheus-client>=0.20" pytest pytest-timeout
# What the HTTP server (sglang.launch_server) imports beyond the scheduler: uvloop (srt/entrypoints/http_server.py),
# python-multipart, jsonschema, xgrammar (srt/function_call/inkling_detector.py; 0.2.7 worked), soundfile.
pip_install "torch==$TORCH_VERSION" uvloop python-multipart jsonschema "xgrammar==0.2.7" soundfile
# schedctl itself, editable, with its own dependencies: this registers the
# [project.entry-points."sglang.srt.plugins"] entry that SGLang's load_plugins() finds.
pip_install "torch==$TORCH_VERSION" -e .

"$VENV/bin/python" - <<'EOF'
from importlib.metadata import entry_points, version
assert version("sglang") == "0.5.23", version("sglang")
assert version("torch").startswith("2.13.0"), version("torch")
names = [ep.name for ep in entry_points(group="sglang.srt.plugins")]
assert "schedctl" in names, f"schedctl's plugin entry point is not registered: {names}"
print("setup-sglang-cpu: sglang", version("sglang"), "torch", version("torch"), "plugins", names)
EOF
echo "$want_stamp" >"$STAMP"
