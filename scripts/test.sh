#!/usr/bin/env bash
# The README's test command. From a fresh machine (Python >= 3.11, pip, gcc):
#   1. creates .venv and installs schedctl with its test tools; runs ruff, mypy and the core tests;
#   2. creates .venv-sglang (torch CPU build + SGLang 0.5.23, ~3 min the first time, then cached) and runs the
#      tests against SGLang's real scheduler code and the torch profiler there.
# Extra arguments go to the core pytest run (e.g. `bash scripts/test.sh -m slow`).
# SCHEDCTL_SKIP_SGLANG=1 skips step 2 (for quick local runs; CI runs everything).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
ruff check schedctl tests benchmarks
mypy
set +e
python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
if [ "${SCHEDCTL_SKIP_SGLANG:-0}" != "1" ]; then
  bash scripts/test-sglang.sh
fi
