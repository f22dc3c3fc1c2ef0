#!/usr/bin/env bash
# Tests against SGLang's real scheduler code on this CPU-only machine: sets up .venv-sglang (idempotent, see
# setup-sglang-cpu.sh), then runs the `sglang`-marked tests of tests/test_sglang*.py there.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-sglang-cpu.sh
set +e
.venv-sglang/bin/python -m pytest -q -p no:cacheprovider -m sglang -W ignore::DeprecationWarning tests/test_sglang*.py "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no sglang tests: failing" >&2
  exit 1
fi
exit "$rc"
