#!/usr/bin/env bash
# Cold start: `hearth run MODEL hi` to its first token, next to llama.cpp's own llama-cli (one
# turn), same file, threads and warm page cache. The measuring is in benches/coldstart.py.
#
#   benches/coldstart.sh [MODEL]        (default: smollm2:135m)
#   HEARTH_BIN=target/release/hearth benches/coldstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/peer.sh
cli_dir=$(bash scripts/build-peer.sh llama-cli)
exec python3 benches/coldstart.py --cli "$cli_dir/llama-cli" --hearth "$hearth" --threads "$threads" \
  --models-dir "$models_dir" "$@"
