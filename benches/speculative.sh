#!/usr/bin/env bash
# Speculative decoding: hearth with prompt lookup (the default) and without (--speculative off)
# next to llama-bench's decode at the same depth, on a copy task, a code edit and a story.
#
#   benches/speculative.sh [MODEL_NAME ...]     (default: smollm2:135m gemma3:270m)
#   THREADS=2 REPS=3 HEARTH_BIN=target/release/hearth benches/speculative.sh
#
# The measuring is in benches/speculative.py.
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/peer.sh
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2:135m gemma3:270m)
exec python3 benches/speculative.py --bench "$bench_bin" --hearth "$hearth" --threads "$threads" --reps "${REPS:-3}" \
  --models-dir "$models_dir" "${models[@]}"
