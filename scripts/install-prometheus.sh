#!/usr/bin/env bash
# Installs Debian's prometheus package (2.42 on Debian 12) when the binary is missing, for the live tests that
# read windows through a real Prometheus (tests/test_live_prometheus.py). The tests start their own prometheus
# process on 127.0.0.1 with their own port, configuration and storage (tests/prometheus_support.py); the
# package's service is never started: a policy-rc.d that denies service starts is in place during the install
# (the previous one, if any, is put back). Fails when it cannot install: CI runs these tests.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-prometheus: prometheus is missing and installing it needs root: apt-get install -y --no-install-recommends prometheus" >&2
  exit 1
fi
start=$SECONDS
policy=/usr/sbin/policy-rc.d
backup=""
if [ -e "$policy" ]; then
  backup=$(mktemp)
  cp -p "$policy" "$backup"
fi
restore() { if [ -n "$backup" ]; then mv "$backup" "$policy"; else rm -f "$policy"; fi; }
trap restore EXIT
printf '#!/bin/sh\n# scripts/install-prometheus.sh: no service starts during the install\nexit 101\n' > "$policy"
chmod +x "$policy"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends prometheus >/dev/null; then
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
echo "install-prometheus: $(prometheus --version 2>&1 | head -1) installed in $(( SECONDS - start ))s" >&2
