#!/usr/bin/env bash
# The README demo: the sidecar against the embedded engine through a time-varying scenario, with a live view of
# load, k and tail latency, then a table against static FCFS, LPM and every static k, and a plot.
# From a fresh clone (Python >= 3.11): creates .venv if missing (scripts/setup.sh), then runs the demo.
# Extra arguments go to `schedctl run` (e.g. `bash scripts/demo.sh --fast`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/schedctl ]; then
  bash scripts/setup.sh
fi
out="${SCHEDCTL_DEMO_DIR:-out/demo}"
mkdir -p "$out"
if [ -z "${SCHEDCTL_LOG__PATH:-}" ]; then
  # the demo's own log: each demo starts over (no decisions appended to the last one's, no learner state resumed)
  export SCHEDCTL_LOG__PATH="$out/decisions.jsonl"
  rm -f "$out"/decisions.jsonl "$out"/decisions.jsonl.*
fi
.venv/bin/schedctl run --config config/sidecar.sim.toml --fresh --plot "$out/timeline.png" "$@"
echo
echo "decision log: $SCHEDCTL_LOG__PATH   (review it: .venv/bin/schedctl decisions $SCHEDCTL_LOG__PATH)"
echo "timeline:     $out/timeline.png"
