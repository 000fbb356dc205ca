#!/usr/bin/env bash
# Seeds fuzz/corpus/gguf (git-ignored) for the `gguf` target: the malformed corpus from
# tests/malformed/make_corpus.py, a tiny valid GGUF model, and the first 64 KiB of each test
# model when present. Every seed is cut to 64 KiB, the fuzzer's -max_len.
set -euo pipefail
cd "$(dirname "$0")"
python="${HEARTH_TEST_PYTHON:-../target/test-venv/bin/python}"
models="${HEARTH_TEST_MODELS:-${HEARTH_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/hearth/models}}"
out=corpus/gguf
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

model_arg=()
if [ -f "$models/smollm2:135m.gguf" ]; then
  model_arg=(--model "$models/smollm2:135m.gguf")
fi
"$python" ../tests/malformed/make_corpus.py "$tmp" "${model_arg[@]}"

"$python" - "$tmp/valid-tiny.gguf" <<'PY'
import sys
import numpy as np
import gguf

w = gguf.GGUFWriter(sys.argv[1], "llama")
w.add_type("model")
w.add_block_count(1)
w.add_context_length(64)
w.add_embedding_length(32)
w.add_feed_forward_length(64)
w.add_head_count(4)
w.add_head_count_kv(2)
w.add_tokenizer_model("llama")
w.add_token_list([f"t{i}" for i in range(8)])
w.add_token_scores([0.0] * 8)
w.add_token_types([1] * 8)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
PY

for m in "$models/smollm2:135m.gguf" "$models/gemma3:270m.gguf"; do
  if [ -f "$m" ]; then
    head -c 65536 "$m" > "$tmp/real-head-$(basename "$m" .gguf | tr ':' '-').gguf"
  fi
done

for f in "$tmp"/*.gguf; do
  head -c 65536 "$f" > "$out/$(basename "$f")"
done
echo "seeded $(ls "$out" | wc -l) files in fuzz/$out"
