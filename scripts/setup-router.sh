#!/usr/bin/env bash
# Creates .venv-router with SGLang's router (sglang-router, a Rust binary wheel) for the fleet testbed
# (benchmarks/fleet.py, tests/test_fleet.py). Kept out of the core venv: the core tests never need it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv-router/bin/python ]; then
  echo "setup-router: creating .venv-router" >&2
  "$PY" -m venv .venv-router
fi
.venv-router/bin/python -m pip install -q --disable-pip-version-check "sglang-router==0.3.2"
echo "setup-router: done; the fleet finds it at .venv-router/bin/python (or set SCHEDCTL_ROUTER_PYTHON)" >&2
