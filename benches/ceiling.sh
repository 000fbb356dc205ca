#!/usr/bin/env bash
# The kernels' ceiling: llama.cpp's own llama-batched-bench decoding 1 and CLIENTS sequences at
# once (no HTTP, no scheduler, no sampling) on each model as its file stores it and converted to
# Q8_0 the way `--convert-weights q8_0` does (llama-quantize --pure into a temporary file). No
# server can serve more than this on the machine: read benches/serve.sh's numbers against it.
# Prints, per model and weights: prompt tok/s, and decode tok/s at 1 and CLIENTS sequences.
#
#   benches/ceiling.sh [MODEL_NAME ...]          (default: smollm2:135m gemma3:270m)
#   THREADS=2 CLIENTS=8 benches/ceiling.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/peer.sh
batched="$src/build/bin/llama-batched-bench"
quantize="$src/build/bin/llama-quantize"
if [ ! -x "$batched" ] || [ ! -x "$quantize" ]; then
  cmake --build "$src/build" -j"$(nproc)" --target llama-batched-bench llama-quantize >/dev/null
fi
clients=${CLIENTS:-8}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2:135m gemma3:270m)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One line from llama-batched-bench's table for each batch: "B S_PP S_TG".
measure() {
  "$batched" -m "$1" -t "$threads" -c 4096 -b 2048 -ub 512 -npp 128 -ntg 64 -npl "1,$clients" -fa on 2>/dev/null |
    awk -F'|' '$2 ~ /^ *[0-9]+ *$/ { gsub(/ /, ""); print $4, $7, $9 }'
}

printf '%-14s %-8s %10s %12s %12s\n' model weights "pp tok/s" "tg B=1" "tg B=$clients"
for m in "${models[@]}"; do
  file="$models_dir/$m.gguf"
  "$quantize" --allow-requantize --pure "$file" "$tmp/q8_0.gguf" Q8_0 "$threads" >/dev/null 2>&1
  for weights in stored q8_0; do
    path=$file
    [ "$weights" = stored ] || path="$tmp/q8_0.gguf"
    rows=$(measure "$path")
    pp=$(awk -v b="$clients" '$1 == b { print $2 }' <<<"$rows")
    tg1=$(awk '$1 == 1 { print $3 }' <<<"$rows")
    tgn=$(awk -v b="$clients" '$1 == b { print $3 }' <<<"$rows")
    printf '%-14s %-8s %10s %12s %12s\n' "$m" "$weights" "$pp" "$tg1" "$tgn"
  done
done
