#!/usr/bin/env bash
# Builds llama.cpp's own tools (TARGETS: llama-server, llama-bench; default both) once from
# the llama-cpp-python source package, which vendors llama.cpp, into ~/.cache/hearth/peer,
# with GGML_NATIVE: built for this machine, the peer hearth is measured against (no peer code is
# committed). Prints the bin directory.
# Used by the tests (llama-server as a provider) and the benches (benches/peer.sh).
set -euo pipefail
peer_ver=0.3.36
peer=${XDG_CACHE_HOME:-$HOME/.cache}/hearth/peer
src="$peer/llama_cpp_python-$peer_ver/vendor/llama.cpp"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(llama-server llama-bench)
missing=()
for t in "${targets[@]}"; do
  [ -x "$src/build/bin/$t" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  mkdir -p "$peer"
  if [ ! -d "$src" ]; then
    python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$peer_ver" -d "$peer"
    tar -xzf "$peer/llama_cpp_python-$peer_ver.tar.gz" -C "$peer"
  fi
  # No AMX, as hearth's own variants have none (src/engine/cpu/variants.rs): llama.cpp's AMX
  # kernels fault on machines whose CPUID reports AMX that the VM does not provide.
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >/dev/null
  cmake --build "$src/build" -j"$(nproc)" --target "${missing[@]}" >/dev/null
fi
echo "$src/build/bin"
