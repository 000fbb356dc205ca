#!/usr/bin/env bash
# Cross-builds the llama.cpp part of hearth for aarch64 (the same llama.cpp source hearth's
# llama-cpp-sys-2 ships, with the ARM CPU variants hearth lists in src/engine/cpu/variants.rs)
# and runs it under qemu-aarch64 as three CPU models, each of which should pick a different
# variant and answer the same greedy text. hearth's own Rust code is not built for aarch64 here
# (this toolchain has no aarch64 std); see the README, "Portable build".
#   scripts/aarch64-check.sh [MODEL_NAME]        (default smollm2:135m)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
missing=()
for p in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

src=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == "llama-cpp-sys-2")
print(os.path.join(os.path.dirname(p["manifest_path"]), "llama.cpp"))')
build=target/aarch64-llama
variants=$(grep -o 'name: "armv[^"]*"' src/engine/cpu/variants.rs | cut -d'"' -f2)
modules=()
for v in $variants; do modules+=("ggml-cpu-$v"); done

# As in hearth's own build: the core (llama, ggml) without a CPU backend, and the variant modules
# from a second configuration of the same source (building ggml there would build every
# variant, and GCC 12 has no -march for the ARMv9.2 ones).
common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
  -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++
  -DBUILD_SHARED_LIBS=ON -DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=ON
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF)
cmake -S "$src" -B "$build/core" "${common[@]}" -DGGML_CPU=OFF >/dev/null
cmake --build "$build/core" -j"$(nproc)" --target llama >/dev/null
cmake -S "$src" -B "$build/variants" "${common[@]}" -DGGML_CPU_ALL_VARIANTS=ON >/dev/null
cmake --build "$build/variants" -j"$(nproc)" --target "${modules[@]}" >/dev/null
bin="$build/core/bin"
for m in "${modules[@]}"; do cp "$build/variants/bin/lib$m.so" "$bin/"; done
aarch64-linux-gnu-gcc -O2 -o "$bin/greedy" scripts/aarch64/greedy.c \
  -I"$src/include" -I"$src/ggml/include" -L"$bin" -lllama -lggml -lggml-base -Wl,-rpath,'$ORIGIN'

model=${1:-smollm2:135m}
models_dir=${HEARTH_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/models}
prompt="The capital of France is"
echo "aarch64 (GCC $(aarch64-linux-gnu-gcc -dumpversion), qemu $(qemu-aarch64 --version | head -n1 | awk '{print $3}')), $model, prompt \"$prompt\", 8 tokens:"
for cpu in cortex-a53 neoverse-n1 max; do
  log=$(mktemp)
  text=$(qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" "$bin/greedy" "$bin" \
    "$models_dir/$model.gguf" "$prompt" 8 2>"$log") || { cat "$log"; exit 1; }
  variant=$(grep -o 'libggml-cpu-[^ ]*\.so' "$log" | tail -n1)
  rm -f "$log"
  printf '  %-12s %-26s %s\n' "$cpu" "$variant" "${text//$'\n'/\\n}"
done
