#!/usr/bin/env bash
# Tests against SGLang on this CPU-only machine: sets up .venv-sglang (idempotent, see setup-sglang-cpu.sh), then
# runs there the `sglang`-marked tests (SGLang's real scheduler code, tests/test_sglang*.py), the `torch`-marked
# tests of the step-time profiler (tests/test_torch_profile*.py) and the `live` tests (tests/test_live_*.py: real
# SGLang servers started on this CPU, one per test module, stopped by process group; tests/test_live_prometheus.py
# also starts a real Prometheus, installed here from Debian's package when missing: scripts/install-prometheus.sh).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-sglang-cpu.sh
bash scripts/install-prometheus.sh
set +e
.venv-sglang/bin/python -m pytest -q -p no:cacheprovider -m "sglang or torch or live" \
  -W ignore::DeprecationWarning tests/test_sglang*.py tests/test_torch_profile*.py tests/test_live_*.py "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no sglang/torch/live tests: failing" >&2
  exit 1
fi
exit "$rc"
