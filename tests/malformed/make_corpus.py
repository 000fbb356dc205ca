#!/usr/bin/env python3
"""Writes a corpus of malformed GGUF files, each named for its shape, that hearth must refuse.

Usage: make_corpus.py OUT_DIR [--model REAL.gguf]

Each file differs from a small valid model in one way, so each is refused for its own reason.
Broken files are written with raw `struct` bytes; well-formed-but-hostile ones with the `gguf`
package's GGUFWriter. With --model, two more come from a real model: its first half, and its
header with bytes flipped. Beside the files, `expected.json` maps each file name to a piece of
text hearth's error must contain ("" where any refusal will do). The shapes follow public
bugs: CVE-2024-21802 (tensor ne overflow), CVE-2024-23605 (n_kv), CVE-2025-66960 (string
length), CVE-2026-7482 "Bleeding Llama" (tensor data past the end), llama.cpp #24997
(alignment), #25821 (block_count past LLAMA_MAX_LAYERS), tokenizer arrays of the wrong type.
"""

import json
import logging
import random
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
F32_TENSOR, Q4_0 = 0, 2


def p_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def v_u32(n):
    return struct.pack("<II", U32, n)


def v_str(s):
    return struct.pack("<I", STRING) + p_str(s)


def v_arr(elem, payloads):
    return struct.pack("<IIQ", ARRAY, elem, len(payloads)) + b"".join(payloads)


def tokens(n):
    return v_arr(STRING, [p_str(f"t{i}") for i in range(n)])


class Raw:
    """A GGUF built byte by byte; starts as a tiny valid llama model."""

    def __init__(self):
        self.version = 3
        self.magic = b"GGUF"
        self.n_kv = None  # None: the real count
        self.n_tensors = None
        self.alignment = 32
        self.kvs = [
            ("general.architecture", v_str("llama")),
            ("general.type", v_str("model")),
            ("llama.block_count", v_u32(2)),
            ("llama.context_length", v_u32(64)),
            ("llama.embedding_length", v_u32(32)),
            ("llama.feed_forward_length", v_u32(64)),
            ("llama.attention.head_count", v_u32(4)),
            ("llama.attention.head_count_kv", v_u32(2)),
            ("tokenizer.ggml.model", v_str("llama")),
            ("tokenizer.ggml.tokens", tokens(4)),
            ("tokenizer.ggml.scores", v_arr(F32, [struct.pack("<f", 0.0)] * 4)),
            ("tokenizer.ggml.token_type", v_arr(I32, [struct.pack("<i", 1)] * 4)),
            ("tokenizer.ggml.bos_token_id", v_u32(1)),
            ("tokenizer.ggml.eos_token_id", v_u32(2)),
        ]
        # (name, dims, type, offset or None for "next aligned"), dims as raw u64 values.
        self.tensors = [
            ("token_embd.weight", [32, 4], F32_TENSOR, None),
            ("output_norm.weight", [32], F32_TENSOR, None),
        ]
        self.data_len = None  # None: exactly what the tensors need

    def set(self, key, value):
        self.kvs = [(k, v) for k, v in self.kvs if k != key] + [(key, value)]
        return self

    def bytes(self):
        b = bytearray(self.magic)
        b += struct.pack("<I", self.version)
        b += struct.pack("<Q", len(self.tensors) if self.n_tensors is None else self.n_tensors)
        b += struct.pack("<Q", len(self.kvs) if self.n_kv is None else self.n_kv)
        for k, v in self.kvs:
            b += p_str(k) + v
        nxt, end = 0, 0
        for name, dims, ttype, offset in self.tensors:
            b += p_str(name) + struct.pack("<I", len(dims))
            for d in dims:
                b += struct.pack("<Q", d % (1 << 64))
            off = nxt if offset is None else offset
            b += struct.pack("<IQ", ttype, off)
            n = 1
            for d in dims:
                n *= d
            nbytes = n * 4 if ttype == F32_TENSOR else n // 32 * 18
            # Absurd shapes get no data: they are refused before their data is looked at.
            if offset is None and nbytes <= 1 << 20:
                end = max(end, off + nbytes)
                nxt = -(-(off + nbytes) // 32) * 32
        align = self.alignment if self.alignment and self.alignment & (self.alignment - 1) == 0 and self.alignment <= 4096 else 32
        while len(b) % align:
            b.append(0)
        b += bytes(end if self.data_len is None else self.data_len)
        return bytes(b)


def raw_shapes():
    """(name, bytes, expected text) for the broken files."""
    out = []

    def add(name, data, expect="invalid GGUF"):
        out.append((name, data if isinstance(data, bytes) else data.bytes(), expect))

    add("empty", b"")
    add("four-bytes", b"GGUF")
    r = Raw()
    r.magic = b"GGML"
    add("bad-magic", r, "not a GGUF")
    for v in (0, 1, 99):
        r = Raw()
        r.version = v
        add(f"version-{v}", r, "unsupported GGUF version")
    r = Raw()
    r.n_kv = (1 << 64) - 1
    add("n-kv-huge", r, "metadata count")
    r = Raw()
    r.n_kv = 60000
    add("n-kv-past-file", r, "metadata count")
    r = Raw()
    r.n_tensors = 1 << 62
    add("n-tensors-huge", r, "tensor count")
    # A string value claiming 2^63 bytes (CVE-2025-66960), and a key of 2^64-1.
    r = Raw().set("general.name", struct.pack("<IQ", STRING, 1 << 63))
    add("string-length-huge", r, "general.name")
    r = Raw()
    r.kvs.insert(0, ("", b""))
    data = bytearray(r.bytes())
    data[24:32] = struct.pack("<Q", (1 << 64) - 1)
    add("key-length-huge", bytes(data), "metadata key")
    r = Raw().set("general.tags", struct.pack("<IIQ", ARRAY, U32, 1 << 61))
    add("array-length-huge", r, "general.tags")
    r = Raw().set("general.tags", struct.pack("<IIQ", ARRAY, ARRAY, 2) + struct.pack("<IQ", U8, 1) + b"\0" + struct.pack("<IQ", U8, 1) + b"\0")
    add("nested-arrays", r, "nested arrays")
    r = Raw().set("general.odd", struct.pack("<II", 77, 0))
    add("unknown-value-type", r, "unknown metadata value type")
    r = Raw().set("general.odd", struct.pack("<IIQ", ARRAY, 200, 1) + b"\0\0\0\0")
    add("unknown-array-type", r, "unknown array element type")
    full = Raw().bytes()
    add("truncated-in-metadata", full[:200])
    r = Raw()
    r.kvs.append(("general.architecture", v_str("llama")))
    add("duplicate-keys", r, "twice")
    r = Raw()
    header_end = len(b"".join([b"GGUF", b"\0" * 20] + [p_str(k) + v for k, v in r.kvs]))
    add("truncated-in-tensor-infos", full[: header_end + 20])
    for dims, name in (([], "n-dims-0"), ([1, 1, 1, 1, 1], "n-dims-5"), ([32, 0], "dim-0")):
        r = Raw()
        r.tensors.append(("bad", dims, F32_TENSOR, None))
        add(name, r, '"bad"')
    r = Raw()
    r.tensors.append(("bad", [1 << 32, 1 << 32, 1 << 32], F32_TENSOR, None))
    add("dims-product-overflow", r, '"bad"')
    # CVE-2024-21802: ne values that are negative as int64.
    r = Raw()
    r.tensors.append(("bad", [32, (1 << 64) - 1], F32_TENSOR, None))
    add("ne-overflow", r, '"bad"')
    r = Raw()
    r.tensors.append(("bad", [32], 1234, None))
    add("unknown-tensor-type", r, "unknown ggml type")
    r = Raw()
    r.tensors.append(("bad", [16, 3], Q4_0, None))  # Q4_0 blocks are 32 wide
    add("partial-block", r, "block size")
    r = Raw()
    r.tensors.append(("late", [32], F32_TENSOR, 1 << 40))
    add("tensor-offset-past-eof", r, "runs past the end")
    # CVE-2026-7482 "Bleeding Llama": the offset is inside the file, the size is not.
    r = Raw()
    r.tensors.append(("huge", [4096, 4096], F32_TENSOR, 0))
    add("offset-plus-size-past-eof", r, "runs past the end")
    r = Raw()
    r.tensors.append(("again", [32], F32_TENSOR, 0))
    add("overlapping-tensors", r, "overlap")
    r = Raw()
    r.tensors.append(("odd", [8], F32_TENSOR, 7))
    add("misaligned-offset", r, "alignment")
    for a, name in ((0, "alignment-0"), (24, "alignment-not-power-of-two"), (1 << 31, "alignment-2pow31")):
        r = Raw().set("general.alignment", v_u32(a))
        r.alignment = a
        add(name, r, "general.alignment")
    r = Raw().set("general.alignment", struct.pack("<IQ", U64, 32))
    add("alignment-u64", r, "general.alignment")
    r = Raw()
    r.tensors.append(("output_norm.weight", [32], F32_TENSOR, None))
    add("duplicate-tensor-names", r, "twice")
    r = Raw()
    r.tensors.append(("blk.0." + "x" * 70, [32], F32_TENSOR, None))
    add("tensor-name-too-long", r, "bytes long")
    r = Raw()
    r.tensors.append(("nul\0name", [32], F32_TENSOR, None))
    add("tensor-name-nul", r, "NUL")
    return out


def writer_shapes(tmp):
    """(name, bytes, expected text) for well-formed files with hostile or missing content."""
    out = []

    def model(name, arch="llama", vocab=8, tensors=True, edit=None, expect="invalid GGUF"):
        path = tmp / f"{name}.tmp"
        w = gguf.GGUFWriter(str(path), arch)
        w.add_type("model")
        w.add_block_count(2)
        w.add_context_length(64)
        w.add_embedding_length(32)
        w.add_feed_forward_length(64)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_tokenizer_model("llama")
        w.add_token_list([f"t{i}" for i in range(vocab)])
        w.add_token_scores([0.0] * vocab)
        w.add_token_types([1] * vocab)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        if edit:
            edit(w)
        if tensors:
            w.add_tensor("token_embd.weight", np.zeros((vocab, 32), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        out.append((name, path.read_bytes(), expect))
        path.unlink()

    def replace(key, adder):
        def edit(w):
            w.kv_data[0].pop(key, None)
            adder(w)
        return edit

    model("block-count-100000", edit=lambda w: w.add_block_count(100000), expect="block_count")
    model("context-length-huge", edit=lambda w: w.add_context_length(1 << 30), expect="context_length")
    model("head-count-huge", edit=lambda w: w.add_head_count(1 << 20), expect="head_count")
    model("expert-used-over-count", edit=lambda w: (w.add_expert_count(4), w.add_expert_used_count(8)), expect="expert_used_count")
    model("tokens-are-ints", edit=replace("tokenizer.ggml.tokens", lambda w: w.add_array("tokenizer.ggml.tokens", list(range(8)))), expect="tokenizer.ggml.tokens")
    model("scores-length-mismatch", edit=replace("tokenizer.ggml.scores", lambda w: w.add_token_scores([0.0] * 5)), expect="tokenizer.ggml.scores")
    model("scores-are-bytes", edit=replace("tokenizer.ggml.scores", lambda w: w.add_key_value("tokenizer.ggml.scores", [0] * 8, gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8)), expect="tokenizer.ggml.scores")
    model("token-type-wrong-type", edit=replace("tokenizer.ggml.token_type", lambda w: w.add_array("tokenizer.ggml.token_type", [1.0] * 8)), expect="tokenizer.ggml.token_type")
    model("bos-token-id-past-vocab", edit=lambda w: w.add_bos_token_id(8), expect="bos_token_id")
    model("eos-token-id-huge", edit=lambda w: w.add_eos_token_id(0xFFFFFFFF), expect="eos_token_id")
    model("architecture-missing", edit=lambda w: w.kv_data[0].pop("general.architecture"), expect="general.architecture")
    model("adapter-not-model", edit=replace("general.type", lambda w: w.add_type("adapter")), expect="adapter")
    model("no-tokenizer", edit=lambda w: [w.kv_data[0].pop(k) for k in list(w.kv_data[0]) if k.startswith("tokenizer.")], expect="tokenizer.ggml.tokens")
    # Well-formed, but nothing to load.
    model("no-tensors", tensors=False, expect="none")
    # Passes hearth's validator; llama.cpp must then fail cleanly on the missing weights.
    model("missing-weights", expect="")
    return out


def real_model_shapes(model_path):
    """Shapes cut from a real model: its first half, and its header with bytes flipped."""
    data = model_path.read_bytes()
    out = [("real-truncated-half", data[: len(data) // 2], "runs past the end")]
    rng = random.Random(4)
    head = bytearray(data[:65536])
    for _ in range(32):
        i = rng.randrange(24, 4096)
        head[i] ^= 1 << rng.randrange(8)
    # And always the top byte of the first key's length, so the file is certain to be invalid.
    head[31] ^= 0x40
    out.append(("real-header-flipped", bytes(head) + data[65536:], "metadata key"))
    return out


def main():
    # GGUFWriter warns when a key is set twice, which the edits here do on purpose.
    logging.getLogger("gguf").setLevel(logging.ERROR)
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    out_dir = Path(args[0])
    model = Path(args[args.index("--model") + 1]) if "--model" in args else None
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = raw_shapes() + writer_shapes(out_dir)
    if model is not None:
        shapes += real_model_shapes(model)
    expected = {}
    for name, data, expect in shapes:
        (out_dir / f"{name}.gguf").write_bytes(data)
        expected[f"{name}.gguf"] = expect
    (out_dir / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(shapes)} malformed GGUF files to {out_dir}")


if __name__ == "__main__":
    main()
