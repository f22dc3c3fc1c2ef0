#!/usr/bin/env bash
# Tests against SGLang's real scheduler code on this CPU-only machine: sets up .venv-sglang (idempotent, see
# setup-sglang-cpu.sh), then runs there the `sglang`-marked tests (tests/test_sglang*.py) and the `torch`-marked
# tests of the step-time profiler (tests/test_torch_profile*.py; .venv-sglang has torch's CPU build).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-sglang-cpu.sh
set +e
.venv-sglang/bin/python -m pytest -q -p no:cacheprovider -m "sglang or torch" -W ignore::DeprecationWarning \
  tests/test_sglang*.py tests/test_torch_profile*.py "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no sglang/torch tests: failing" >&2
  exit 1
fi
exit "$rc"
