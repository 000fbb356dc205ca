#!/usr/bin/env bash
# Single-stream speed: hearth next to llama.cpp's own llama-bench, same model, same threads,
# same machine, same run. Prints tok/s for prefill (pp, a ~512-token prompt) and decode (tg, 128
# tokens from a short prompt) and the ratio hearth / llama-bench.
#
#   benches/compare.sh [MODEL_NAME ...]        (default: smollm2:135m gemma3:270m)
#   THREADS=2 REPS=3 benches/compare.sh
#
# llama-bench is built once from the llama-cpp-python source package (which vendors llama.cpp)
# into ~/.cache/hearth/peer, with GGML_NATIVE like hearth's build; no peer code is committed.
# The measuring is in benches/compare.py: it alternates the two, one repetition each, so that
# the noise of a shared machine hits both alike, and reports the median ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

peer_ver=0.3.36
peer=${XDG_CACHE_HOME:-$HOME/.cache}/hearth/peer
src="$peer/llama_cpp_python-$peer_ver/vendor/llama.cpp"
bench_bin="$src/build/bin/llama-bench"
if [ ! -x "$bench_bin" ]; then
  mkdir -p "$peer"
  python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$peer_ver" -d "$peer"
  tar -xzf "$peer/llama_cpp_python-$peer_ver.tar.gz" -C "$peer"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build "$src/build" -j"$(nproc)" --target llama-bench llama-server >/dev/null
fi

cargo build --quiet
hearth=target/debug/hearth
threads=${THREADS:-$(python3 -c 'import os; print(len({l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("core id")}) or os.cpu_count())')}
reps=${REPS:-3}
models_dir=${HEARTH_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/models}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(smollm2:135m gemma3:270m)

exec python3 benches/compare.py --bench "$bench_bin" --hearth "$hearth" --threads "$threads" --reps "$reps" \
  --models-dir "$models_dir" "${models[@]}"
