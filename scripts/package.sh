#!/usr/bin/env bash
# Builds the release binary and writes the release file with its sha256 into dist/:
#   dist/hearth-VERSION-ARCH-linux  and  dist/hearth-VERSION-ARCH-linux.sha256
# Then prints its size and what it needs from the system: the shared libraries the executable and
# its embedded CPU-kernel modules ask for (less ggml's core, which is inside the executable), and
# the newest glibc symbol version any of them uses.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --quiet
bin=target/release/hearth
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
name="hearth-$version-$(uname -m)-linux"
mkdir -p dist
cp "$bin" "dist/$name"
(cd dist && sha256sum "$name" >"$name.sha256")

# The modules travel inside the binary; read the copies build.rs embedded.
modules=$(ls -t target/release/build/hearth-*/out/cpu-variants/build/bin/libggml-cpu-*.so | head -n 20)
needs=$( (objdump -p "$bin"; for m in $modules; do objdump -p "$m"; done) | awk '/NEEDED/{print $2}' | grep -v '^libggml-base' | sort -u | tr '\n' ' ')
glibc=$( (objdump -T "$bin"; for m in $modules; do objdump -T "$m"; done) | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
echo "dist/$name: $(stat -c %s "dist/$name") bytes, sha256 $(cut -d' ' -f1 "dist/$name.sha256")"
echo "needs: $needs"
echo "newest glibc symbol: $glibc"
