#!/usr/bin/env bash
# The README's test command. From a fresh machine (Python >= 3.11, pip, gcc):
#   1. creates .venv and installs schedctl with its test tools; runs ruff, mypy and the core tests;
#   2. creates .venv-sglang (torch CPU build + SGLang 0.5.23 and its server's packages; cached after the first
#      time) and runs there the tests against SGLang's real scheduler code, the torch profiler tests, and the
#      live tests (real SGLang servers started on this CPU; docs/sglang-cpu.md; a real Prometheus);
#   3. creates .venv-router (SGLang's router, sglang-router) and runs the fleet test: two `schedctl sim serve`
#      replicas behind the real router, a sidecar each, traffic from `schedctl load` (docs/simserve.md).
# Each part prints how long it took. Extra arguments go to the core pytest run (e.g. `bash scripts/test.sh -m slow`).
# SCHEDCTL_SKIP_SGLANG=1 skips step 2, SCHEDCTL_SKIP_FLEET=1 step 3 (for quick local runs; CI runs everything).
set -euo pipefail
cd "$(dirname "$0")/.."
part() { echo "[test.sh] $1: $(( SECONDS - start ))s"; start=$SECONDS; }
start=$SECONDS
bash scripts/setup.sh dev
part "set-up of .venv"
. .venv/bin/activate
ruff check schedctl tests benchmarks deploy
mypy
part "ruff and mypy"
set +e
python -m pytest -q "$@"
rc=$?
set -e
part "core tests"
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
if [ "${SCHEDCTL_SKIP_SGLANG:-0}" != "1" ]; then
  bash scripts/setup-sglang-cpu.sh
  part "set-up of .venv-sglang"
  bash scripts/test-sglang.sh
  part "SGLang, torch and live tests"
fi
if [ "${SCHEDCTL_SKIP_FLEET:-0}" != "1" ]; then
  bash scripts/setup-router.sh
  .venv-router/bin/python -c "import sglang_router" # the fleet test skips without it: make its absence an error
  python -m pytest -q -p no:cacheprovider -m slow tests/test_fleet.py -k router
  part "set-up of .venv-router and the fleet test"
fi
