#!/usr/bin/env bash
# Installs what hearth needs to build and test on Debian/Ubuntu, then fetches the test models.
# Idempotent: installed packages and fetched models are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# llama-cpp-sys-2 builds llama.cpp with CMake and generates bindings with libclang.
missing=()
for p in cmake clang libclang-dev ca-certificates curl; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# The model fetch and the client tests need Python with pip and venv (any python3 will do).
if ! python3 -m pip --version >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
  missing+=(python3 python3-pip python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

bash models/fetch-test-models.sh
