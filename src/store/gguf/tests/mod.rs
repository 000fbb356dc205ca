//! The validator's tests: small GGUF files written here, each breaking one rule.

pub(crate) mod builder;

use super::*;
use builder::*;

#[test]
fn a_small_model_passes_and_reads_back() {
    let info = Builder::model().parse_model().expect("valid");
    assert_eq!(info.architecture(), "llama");
    assert_eq!(info.vocab_size(), 4);
    assert_eq!(info.tensors.len(), 3);
    assert_eq!(info.tensors[1].offset, 512);
    assert_eq!(info.arch_u64("block_count"), Some(2));
    assert_eq!(info.tensor_bytes(), 32 * 4 * 4 + 32 * 4 + 32 * 32 / 32 * 34);
}

#[test]
fn long_arrays_are_summarised_but_still_checked() {
    let mut b = Builder::model();
    b.set("tokenizer.ggml.tokens", tokens(300));
    b.set(
        "tokenizer.ggml.scores",
        v_arr(vt::F32, vec![0f32.to_le_bytes().to_vec(); 300]),
    );
    b.set(
        "tokenizer.ggml.token_type",
        v_arr(vt::I32, vec![1i32.to_le_bytes().to_vec(); 300]),
    );
    let info = b.parse_model().expect("valid");
    assert_eq!(
        info.get("tokenizer.ggml.tokens"),
        Some(&GgufValue::LongArray { elem_type: 8, len: 300 })
    );
    assert_eq!(info.vocab_size(), 300);
    b.set(
        "tokenizer.ggml.scores",
        v_arr(vt::F32, vec![0f32.to_le_bytes().to_vec(); 299]),
    );
    refused(&b, &["tokenizer.ggml.scores", "299", "300"]);
}

#[test]
fn a_custom_alignment_is_honoured() {
    let mut b = Builder::model();
    b.alignment = 64;
    b.set("general.alignment", v_u32(64));
    let info = b.parse_model().expect("valid");
    assert_eq!(info.tensors[1].offset % 64, 0);
}

#[test]
fn per_layer_hyper_parameters_are_kept_and_checked() {
    let mut b = Builder::model();
    b.set(
        "llama.attention.head_count_kv",
        v_arr(vt::U32, vec![p_u32(2), p_u32(0)]),
    );
    b.parse_model().expect("valid: zero kv heads on a layer is allowed");
    let many = vec![p_u32(4); 100];
    b.set("llama.attention.head_count", v_arr(vt::U32, many));
    let info = b.parse_model().expect("valid");
    assert!(matches!(info.get("llama.attention.head_count"), Some(GgufValue::Array(v)) if v.len() == 100));
    b.set(
        "llama.attention.head_count",
        v_arr(vt::U32, vec![p_u32(4), p_u32(20_000)]),
    );
    refused(&b, &["llama.attention.head_count", "20000"]);
    b.set("llama.attention.head_count", v_arr(vt::U32, vec![p_u32(4); 513]));
    refused(&b, &["llama.attention.head_count", "513"]);
    b.set("llama.attention.head_count", v_arr(vt::F32, vec![p_u32(4)]));
    refused(&b, &["llama.attention.head_count", "array of integers"]);
}

// ------------------------------------------------------------ header

#[test]
fn rejects_bad_magic_short_files_and_versions() {
    assert!(matches!(parse_gguf_bytes(b"GGUX\x03\0\0\0"), Err(GgufError::BadMagic)));
    refused_bytes(b"", &["too short"], false);
    refused_bytes(b"GGUF", &["too short"], false);
    refused_bytes(b"GG", &["too short"], false);
    for v in [0u32, 1, 4, 99] {
        let mut b = header(0, 0);
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(parse_gguf_bytes(&b), Err(GgufError::BadVersion(x)) if x == v));
    }
}

#[test]
fn rejects_counts_over_the_caps_or_the_file() {
    refused_bytes(&header(0, u64::MAX), &["metadata count", "limit"], false);
    refused_bytes(&header(u64::MAX, 0), &["tensor count", "limit"], false);
    refused_bytes(&header(MAX_TENSORS + 1, 0), &["tensor count", "limit"], false);
    refused_bytes(&header(0, 1000), &["metadata count 1000", "does not fit"], false);
    refused_bytes(&header(1000, 0), &["tensor count 1000", "does not fit"], false);
}

// ------------------------------------------------------------ metadata

#[test]
fn rejects_string_and_array_lengths_past_the_end() {
    let mut b = header(0, 1);
    b.extend(u64::MAX.to_le_bytes());
    b.extend([0u8; 16]);
    refused_bytes(&b, &["metadata key #0", "bytes long"], false);
    let mut b = Builder::model();
    b.set("general.name", scalar(vt::STRING, u64::MAX.to_le_bytes().to_vec()));
    refused(&b, &["general.name", "string value"]);
    b.set("general.name", scalar(vt::STRING, (1u64 << 24).to_le_bytes().to_vec()));
    refused(&b, &["general.name", "does not fit"]);
    let mut arr = vt::ARRAY.to_le_bytes().to_vec();
    arr.extend(vt::U32.to_le_bytes());
    arr.extend((u64::MAX / 2).to_le_bytes());
    b.set("general.name", arr);
    refused(&b, &["general.name", "array length"]);
}

#[test]
fn rejects_unknown_types_and_nested_arrays() {
    let mut b = Builder::model();
    b.set("general.x", scalar(13, p_u32(0)));
    refused(&b, &["general.x", "unknown metadata value type 13"]);
    b.set("general.x", v_arr(42, vec![]));
    refused(&b, &["general.x", "unknown array element type 42"]);
    b.set("general.x", v_arr(vt::ARRAY, vec![]));
    refused(&b, &["general.x", "nested"]);
}

#[test]
fn rejects_bad_keys() {
    let mut b = Builder::model();
    b.kvs.push((b"general.architecture".to_vec(), v_str("llama")));
    refused(&b, &["general.architecture", "twice"]);
    let mut b = Builder::model();
    b.kvs.push((Vec::new(), v_u32(1)));
    refused(&b, &["metadata key", "empty"]);
    let mut b = Builder::model();
    b.kvs.push((b"a\0b".to_vec(), v_u32(1)));
    refused(&b, &["NUL"]);
    let mut b = Builder::model();
    b.kvs.push((vec![b'k'; 65_536], v_u32(1)));
    refused(&b, &["65536 bytes long"]);
    let mut b = Builder::model();
    b.kvs.push((vec![0xff, 0xfe], v_u32(1)));
    refused(&b, &["not UTF-8"]);
}

#[test]
fn checks_the_alignment() {
    for (a, needle) in [
        (0u32, "power of two"),
        (3, "power of two"),
        (1 << 31, "power of two"),
        (1 << 21, "no larger"),
    ] {
        let mut b = Builder::model();
        b.set("general.alignment", v_u32(a));
        refused(&b, &["general.alignment", needle]);
    }
    let mut b = Builder::model();
    b.set("general.alignment", scalar(vt::U64, 32u64.to_le_bytes().to_vec()));
    refused(&b, &["general.alignment", "must be a u32"]);
}

#[test]
fn general_keys_must_be_strings() {
    let mut b = Builder::model();
    b.set("general.architecture", v_u32(1));
    refused(&b, &["general.architecture", "string"]);
    let mut b = Builder::model();
    b.set("general.type", v_u32(1));
    refused(&b, &["general.type", "string"]);
}

// ------------------------------------------------------------ tensors

#[test]
fn rejects_bad_tensor_names() {
    let mut b = Builder::model();
    b.tensor("", &[32], 0);
    refused(&b, &["tensor #3", "empty"]);
    let mut b = Builder::model();
    b.tensor(&"n".repeat(64), &[32], 0);
    refused(&b, &["tensor #3", "64 bytes long"]);
    let mut b = Builder::model();
    b.tensor(&"n".repeat(63), &[32], 0);
    b.parse_model().expect("63 bytes is the longest allowed name");
    let mut b = Builder::model();
    b.tensor("output_norm.weight", &[32], 0);
    refused(&b, &["\"output_norm.weight\"", "twice"]);
    let mut b = Builder::model();
    b.tensor("x\0y", &[32], 0);
    refused(&b, &["NUL"]);
}

#[test]
fn rejects_bad_shapes() {
    let cases: &[(&[u64], &str)] = &[
        (&[], "0 dimensions"),
        (&[1, 1, 1, 1, 1], "5 dimensions"),
        (&[32, 0], "dimension 1 is 0"),
        (&[32, u64::MAX], "dimension 1 is"),
        (&[1 << 32, 1 << 32], "elements"),
        (&[1 << 40, 1 << 30], "elements"),
    ];
    for (dims, needle) in cases {
        let mut b = Builder::model();
        b.tensor("bad", dims, 0);
        refused(&b, &["tensor \"bad\"", needle]);
    }
}

#[test]
fn rejects_unknown_types_and_partial_blocks() {
    let mut b = Builder::model();
    b.tensor("bad", &[32], 4); // 4 and 5 were Q4_2/Q4_3, removed from ggml
    refused(&b, &["tensor \"bad\"", "unknown ggml type 4"]);
    let mut b = Builder::model();
    b.tensor("bad", &[32], 1_000_000);
    refused(&b, &["unknown ggml type"]);
    let mut b = Builder::model();
    b.tensor("bad", &[16, 2], 2); // Q4_0 blocks hold 32
    refused(&b, &["tensor \"bad\"", "block size 32"]);
}

#[test]
fn rejects_tensor_data_outside_the_file() {
    let mut b = Builder::model();
    b.data_len = Some(100);
    refused(&b, &["runs past the end of the file"]);
    let mut b = Builder::model();
    b.tensor("late", &[8], 0).offset = Some(1 << 40);
    refused(&b, &["tensor \"late\"", "offset 1099511627776", "runs past the end"]);
    let mut b = Builder::model();
    b.tensor("late", &[8], 0).offset = Some(u64::MAX - 31);
    refused(&b, &["tensor \"late\"", "runs past the end"]);
    // Offset inside the file, size past its end (CVE-2026-7482).
    let mut b = Builder::model();
    let bytes = b.bytes();
    b.data_len = Some(bytes.len() as u64);
    b.tensor("huge", &[1 << 20, 1 << 10], 0).offset = Some(0);
    refused(&b, &["tensor \"huge\"", "runs past the end"]);
}

#[test]
fn rejects_overlapping_and_misaligned_tensors() {
    let mut b = Builder::model();
    b.tensor("again", &[32], 0).offset = Some(0);
    refused(&b, &["overlap", "\"again\""]);
    let mut b = Builder::model();
    b.tensor("odd", &[8], 0).offset = Some(7);
    refused(&b, &["tensor \"odd\"", "offset 7", "alignment 32"]);
}

// ------------------------------------------------------------ tokenizer

#[test]
fn checks_tokenizer_array_types_and_lengths() {
    let mut b = Builder::model();
    b.set("tokenizer.ggml.tokens", v_arr(vt::I32, vec![p_u32(1); 4]));
    refused(&b, &["tokenizer.ggml.tokens", "array of strings", "i32"]);
    b.set("tokenizer.ggml.tokens", v_str("abc"));
    refused(&b, &["tokenizer.ggml.tokens", "array of strings"]);
    b.set("tokenizer.ggml.tokens", tokens(0));
    refused(&b, &["tokenizer.ggml.tokens has 0 tokens"]);
    let mut b = Builder::model();
    b.set("tokenizer.ggml.scores", v_arr(vt::F32, vec![p_u32(0); 3]));
    refused(&b, &["tokenizer.ggml.scores has 3 entries", "4 tokens"]);
    b.set("tokenizer.ggml.scores", v_arr(vt::U8, vec![vec![0]; 4]));
    refused(&b, &["tokenizer.ggml.scores must be an array of f32"]);
    let mut b = Builder::model();
    b.set("tokenizer.ggml.token_type", v_arr(vt::U32, vec![p_u32(1); 4]));
    refused(&b, &["tokenizer.ggml.token_type must be an array of i32"]);
    let mut b = Builder::model();
    b.set("tokenizer.ggml.merges", v_arr(vt::U32, vec![p_u32(1)]));
    refused(&b, &["tokenizer.ggml.merges must be an array of strings"]);
    b.set("tokenizer.ggml.merges", v_arr(vt::STRING, vec![p_str(b"a b")]));
    b.parse_model().expect("valid merges");
    let mut b = Builder::model();
    b.remove("tokenizer.ggml.tokens").remove("tokenizer.ggml.token_type");
    refused(&b, &["tokenizer.ggml.scores without tokenizer.ggml.tokens"]);
}

#[test]
fn special_token_ids_must_index_the_vocabulary() {
    let mut b = Builder::model();
    b.set("tokenizer.ggml.bos_token_id", v_u32(4));
    refused(&b, &["tokenizer.ggml.bos_token_id 4", "vocabulary size 4"]);
    let mut b = Builder::model();
    b.set("tokenizer.ggml.eot_token_id", v_u32(1_000_000));
    refused(&b, &["tokenizer.ggml.eot_token_id"]);
    let mut b = Builder::model();
    b.set(
        "tokenizer.ggml.padding_token_id",
        scalar(vt::I32, (-1i32).to_le_bytes().to_vec()),
    );
    refused(&b, &["tokenizer.ggml.padding_token_id", "non-negative integer", "-1"]);
    let mut b = Builder::model();
    b.set(
        "tokenizer.ggml.eos_token_id",
        scalar(vt::F32, 2f32.to_le_bytes().to_vec()),
    );
    refused(&b, &["tokenizer.ggml.eos_token_id", "integer"]);
    let mut b = Builder::model();
    b.set("tokenizer.ggml.eos_token_id", scalar(vt::U8, vec![3]));
    b.parse_model().expect("any integer width is fine");
}

// ------------------------------------------------------------ hyper-parameters

#[test]
fn checks_hyper_parameter_ranges() {
    let cases: &[(&str, u32)] = &[
        ("llama.block_count", 0),
        ("llama.block_count", 513),
        ("llama.block_count", 100_000),
        ("llama.context_length", 0),
        ("llama.context_length", (1 << 24) + 1),
        ("llama.embedding_length", 0),
        ("llama.embedding_length", (1 << 20) + 1),
        ("llama.feed_forward_length", (1 << 20) + 1),
        ("llama.attention.head_count", 16_385),
        ("llama.attention.key_length", 70_000),
        ("llama.rope.dimension_count", 70_000),
        ("llama.expert_count", 2000),
    ];
    for (key, v) in cases {
        let mut b = Builder::model();
        b.set(key, v_u32(*v));
        refused(&b, &[key, &v.to_string(), "outside"]);
    }
    let mut b = Builder::model();
    b.set("llama.block_count", v_u32(512));
    b.parse_model().expect("512 layers is the limit");
    b.set("llama.block_count", v_str("many"));
    refused(&b, &["llama.block_count must be an integer", "string"]);
    b.set("llama.block_count", scalar(vt::I32, (-3i32).to_le_bytes().to_vec()));
    refused(&b, &["llama.block_count is -3"]);
    let mut b = Builder::model();
    b.set("llama.expert_count", v_u32(8))
        .set("llama.expert_used_count", v_u32(9));
    refused(&b, &["expert_used_count 9", "expert_count 8"]);
    b.set("llama.expert_used_count", v_u32(2));
    b.parse_model().expect("valid experts");
}

#[test]
fn hyper_parameters_follow_the_declared_architecture() {
    let mut b = Builder::model();
    b.set("general.architecture", v_str("gemma3"));
    b.parse_model().expect("llama.* keys are not gemma3's");
    b.set("gemma3.block_count", v_u32(9999));
    refused(&b, &["gemma3.block_count"]);
}

// ------------------------------------------------------------ kinds

#[test]
fn a_model_needs_architecture_vocabulary_and_tensors() {
    let mut b = Builder::model();
    b.remove("general.architecture");
    b.parse().expect("well-formed");
    refused(&b, &["general.architecture"]);
    let mut b = Builder::model();
    b.remove("tokenizer.ggml.tokens")
        .remove("tokenizer.ggml.scores")
        .remove("tokenizer.ggml.token_type");
    b.remove("tokenizer.ggml.bos_token_id")
        .remove("tokenizer.ggml.eos_token_id");
    b.parse().expect("well-formed");
    refused(&b, &["tokenizer.ggml.tokens"]);
    let mut b = Builder::model();
    b.tensors.clear();
    b.parse().expect("well-formed");
    refused(&b, &["has none"]);
    let mut b = Builder::model();
    b.set("general.type", v_str("adapter"));
    refused(&b, &["adapter"]);
    b.parse()
        .expect("well-formed")
        .check_kind(GgufKind::Adapter)
        .expect("an adapter");
    let err = Builder::model()
        .parse()
        .expect("ok")
        .check_kind(GgufKind::Adapter)
        .expect_err("not an adapter");
    assert!(err.to_string().contains("\"model\""), "{err}");
}

// ------------------------------------------------------------ robustness

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = Builder::model().bytes();
    for n in 0..bytes.len() {
        assert!(
            parse_gguf_bytes(&bytes[..n]).is_err(),
            "a file cut at {n} bytes was accepted"
        );
    }
}

#[test]
fn byte_flips_never_panic() {
    let bytes = Builder::model().bytes();
    let header_len = bytes.len().min(1024);
    for i in 0..header_len {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let _ = parse_gguf_bytes(&b).map(|info| info.check_kind(GgufKind::Model));
        }
    }
}

#[test]
fn read_gguf_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("hearth-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("m.gguf");
    std::fs::write(&path, Builder::model().bytes()).expect("write");
    assert_eq!(read_gguf(&path).expect("valid").vocab_size(), 4);
    // A file is read as what it says it is; the model load path insists on a model.
    let mut adapter = Builder::model();
    adapter
        .set("general.type", v_str("adapter"))
        .remove("tokenizer.ggml.tokens");
    adapter
        .remove("tokenizer.ggml.scores")
        .remove("tokenizer.ggml.token_type");
    adapter
        .remove("tokenizer.ggml.bos_token_id")
        .remove("tokenizer.ggml.eos_token_id");
    std::fs::write(&path, adapter.bytes()).expect("write");
    assert_eq!(read_gguf(&path).expect("an adapter").declared_kind(), GgufKind::Adapter);
    let err = read_gguf_as(&path, GgufKind::Model).expect_err("not a model");
    assert!(err.to_string().contains("adapter"), "{err}");
    std::fs::write(&path, b"GGUF").expect("write");
    assert!(read_gguf(&path).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(
        read_gguf(&dir.join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
}

/// The real test models (see `models/fetch-test-models.sh`) pass. In the integration tier,
/// where the models must be present.
#[cfg(feature = "integration")]
#[test]
fn the_real_test_models_pass() {
    let dir = std::env::var_os("HEARTH_TEST_MODELS")
        .or_else(|| std::env::var_os("HEARTH_MODELS"))
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let data = std::env::var_os("XDG_DATA_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share")))?;
            Some(data.join("hearth/models"))
        })
        .expect("HOME is set");
    for name in ["smollm2:135m.gguf", "gemma3:270m.gguf"] {
        let path = dir.join(name);
        assert!(path.is_file(), "{} is missing: run models/fetch-test-models.sh", path.display());
        let info = read_gguf(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(info.vocab_size() > 1000 && !info.tensors.is_empty(), "{name}");
    }
}
