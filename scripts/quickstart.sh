#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds hearth's release binary (the portable one: it runs on any
# x86-64 CPU from SSE4.2 up), and answers a prompt with the default model.
#   scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
prompt=${1:-"Why is the sky blue? Answer in two sentences."}
exec target/release/hearth run smollm2:135m "$prompt"
