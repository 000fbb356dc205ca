#!/usr/bin/env bash
# A fleet's second turn, cache-aware against round-robin routing: three nodes and two fronts on
# loopback (the measuring is in benches/fleet.py). No peer is involved: the ratio is between
# the two policies, in one run.
#
#   benches/fleet.sh [MODEL]            (default: smollm2:135m)
#   HEARTH_BIN=target/release/hearth benches/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${HEARTH_BIN:-}" ]; then
  hearth=$HEARTH_BIN
else
  cargo build --quiet
  hearth=target/debug/hearth
fi
exec python3 benches/fleet.py --hearth "$hearth" "$@"
