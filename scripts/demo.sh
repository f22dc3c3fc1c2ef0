#!/usr/bin/env bash
# The README's demo command: creates .venv (if missing), installs schedctl, and runs the demo.
# (Provisional: a short policy sweep on the embedded engine, until the sidecar's `schedctl run` lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
schedctl sweep --workload "gsp:num_groups=256,system_prompt_len=4096,group_distribution=zipf,zipf_alpha=1.0" \
  --rates 4,8,10,12 --policies fcfs,klpm:4,lpm --num-requests 1500 --plot out/demo-sweep.png "$@"
echo "plot: out/demo-sweep.png"
