#!/usr/bin/env bash
# Sets up (packages, test models), then runs every test: unit tests and the integration tests
# that drive the real binary on the real models, including the official `ollama` Python client.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

# The shared response cache and rate limits are tested against a real Redis server (the tests
# start their own on a free loopback port); the portable binary runs under qemu-x86_64 as
# older CPU models.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v qemu-x86_64 >/dev/null || missing+=(qemu-user)
# PostgreSQL for the shared conversation store's tests (they start their own server as the
# postgres user, in a temporary directory, on a free loopback port).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
# A real headless browser for the web page's tests (tests/ui.rs), driven over DevTools.
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# llama.cpp's own server is a real upstream for the provider tests (OpenAI's and Anthropic's
# APIs); built once into ~/.cache/hearth/peer.
HEARTH_TEST_LLAMA_SERVER="$(bash scripts/build-peer.sh llama-server)/llama-server"
export HEARTH_TEST_LLAMA_SERVER

venv=target/test-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ollama==0.6.3 gguf==0.19.0 openai==3.54.0 anthropic==2.14.0 jsonschema==4.26.0 prometheus-client==0.26.0
export HEARTH_TEST_PYTHON="$PWD/$venv/bin/python"

cargo test --no-fail-fast --features integration "$@"
