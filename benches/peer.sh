# Sourced by the benches: builds llama.cpp's llama-bench and llama-server once from the
# llama-cpp-python source package (which vendors llama.cpp) into ~/.cache/hearth/peer, with
# GGML_NATIVE like hearth's build (no peer code is committed), builds hearth with the profile
# the tests use, and sets: bench_bin, server_bin, hearth, threads (physical cores, or $THREADS),
# models_dir.
peer_ver=0.3.36
peer=${XDG_CACHE_HOME:-$HOME/.cache}/hearth/peer
src="$peer/llama_cpp_python-$peer_ver/vendor/llama.cpp"
bench_bin="$src/build/bin/llama-bench"
server_bin="$src/build/bin/llama-server"
if [ ! -x "$bench_bin" ] || [ ! -x "$server_bin" ]; then
  mkdir -p "$peer"
  python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$peer_ver" -d "$peer"
  tar -xzf "$peer/llama_cpp_python-$peer_ver.tar.gz" -C "$peer"
  # The same AMX opt-out as hearth's own build (.cargo/config.toml): llama.cpp's AMX kernels
  # fault on machines whose CPUID reports AMX that the VM does not provide.
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >/dev/null
  cmake --build "$src/build" -j"$(nproc)" --target llama-bench llama-server >/dev/null
fi

cargo build --quiet
hearth=target/debug/hearth
threads=${THREADS:-$(python3 -c 'import os; print(len({l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("core id")}) or os.cpu_count())')}
models_dir=${HEARTH_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/models}
