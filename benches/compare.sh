#!/usr/bin/env bash
# Single-stream speed: hearth next to llama.cpp's own llama-bench, same model, same threads,
# same machine, same run. Prints tok/s for prefill (pp, a ~512-token prompt) and decode (tg, 128
# tokens from a short prompt) and the ratio hearth / llama-bench.
#
#   benches/compare.sh [MODEL_NAME ...]        (default: smollm2:135m gemma3:270m)
#   THREADS=2 REPS=3 benches/compare.sh
#   HEARTH_SPECULATIVE=off benches/compare.sh   (the kernels alone: hearth runs at its defaults,
#       speculative decoding included, whose guesses pay on the tg task when the story repeats)
#   HEARTH_BINS="portable=target/release/hearth native=/path/to/native/hearth" benches/compare.sh
#       (several hearth builds in the same run, one row each)
#
# llama-bench is built once from the llama-cpp-python source package (which vendors llama.cpp)
# into ~/.cache/hearth/peer, with GGML_NATIVE like hearth's build; no peer code is committed.
# The measuring is in benches/compare.py: it alternates the two, one repetition each, so that
# the noise of a shared machine hits both alike, and reports the median ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/peer.sh
reps=${REPS:-3}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2:135m gemma3:270m)

hearth_args=()
for h in ${HEARTH_BINS:-$hearth}; do
  hearth_args+=(--hearth "$h")
done
exec python3 benches/compare.py --bench "$bench_bin" "${hearth_args[@]}" --threads "$threads" --reps "$reps" \
  --models-dir "$models_dir" "${models[@]}"
