# Sourced by the benches: builds llama.cpp's llama-bench and llama-server once from the
# llama-cpp-python source package (which vendors llama.cpp) into ~/.cache/hearth/peer, with
# GGML_NATIVE (no peer code is committed), builds hearth with the profile the tests use unless
# HEARTH_BIN names a binary (a release build, say), and sets: bench_bin, server_bin, hearth,
# threads (physical cores, or $THREADS), models_dir.
bin_dir=$(bash "$(dirname "${BASH_SOURCE[0]}")/../scripts/build-peer.sh" llama-bench llama-server)
bench_bin="$bin_dir/llama-bench"
server_bin="$bin_dir/llama-server"

if [ -n "${HEARTH_BIN:-}" ]; then
  hearth=$HEARTH_BIN
else
  cargo build --quiet
  hearth=target/debug/hearth
fi
threads=${THREADS:-$(python3 -c 'import os; print(len({l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("core id")}) or os.cpu_count())')}
models_dir=${HEARTH_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/models}
