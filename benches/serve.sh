#!/usr/bin/env bash
# Serving: hearth's HTTP server next to llama.cpp's llama-server, same model, same threads, same
# machine, same run, driven by the same client (`hearth bench --url --api openai`, OpenAI's
# streaming /v1/completions, which both serve). Prints, per model:
#   - aggregate decode tok/s with CLIENTS concurrent clients (llama-server -np CLIENTS, hearth
#     --parallel CLIENTS) and the ratio hearth / llama-server, for hearth with the weights as the
#     file stores them and with --convert-weights q8_0 (llama-server always gets the file);
#   - the second turn of a chat with a ~1k-token history: its prompt time over the first turn's
#     (prefix reuse);
# and once: cache-hit latency percentiles at a fixed request rate (hey -q), for a response the
# cache holds.
#
#   benches/serve.sh [MODEL_NAME ...]            (default: smollm2:135m gemma3:270m)
#   THREADS=2 CLIENTS=8 REQUESTS=32 PREDICT=64 REPS=2 RATE=2000 benches/serve.sh
#   HEARTH_BINS="portable=target/release/hearth native=/path/to/native/hearth" benches/serve.sh
#       (several hearth builds in the same run)
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/peer.sh
if ! command -v hey >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq hey >/dev/null
fi
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2:135m gemma3:270m)

hearth_args=()
for h in ${HEARTH_BINS:-$hearth}; do
  hearth_args+=(--hearth "$h")
done
exec python3 benches/serve.py --server "$server_bin" "${hearth_args[@]}" --threads "$threads" \
  --clients "${CLIENTS:-8}" --requests "${REQUESTS:-32}" --predict "${PREDICT:-64}" --reps "${REPS:-2}" \
  --rate "${RATE:-2000}" --models-dir "$models_dir" "${models[@]}"
