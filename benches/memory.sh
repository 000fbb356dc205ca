#!/usr/bin/env bash
# Resident memory of a loaded model: hearth at its defaults next to llama-server with the same
# context and slots (one pool of 4096 KV cells for 4 slots). The measuring is in benches/memory.py.
#
#   benches/memory.sh [MODEL_NAME ...]     (default: smollm2:135m gemma3:270m)
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/peer.sh
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2:135m gemma3:270m)
exec python3 benches/memory.py --server "$server_bin" --hearth "$hearth" --threads "$threads" \
  --models-dir "$models_dir" "${models[@]}"
