#!/usr/bin/env bash
# Creates .venv (if missing) and installs schedctl into it. `setup.sh dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PY" --version 2>&1)" >&2
  "$PY" -m venv .venv
fi
echo "setup: installing schedctl${extras:+ with its $extras tools} into .venv (a minute or two; pip's own output is quiet)" >&2
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$extras" = "dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: done; run it as .venv/bin/schedctl (or '. .venv/bin/activate' first)" >&2
