//! Reads and validates a GGUF file's header, metadata and tensor directory in Rust, before
//! llama.cpp's C++ parser (a long history of CVEs) ever sees the file.
//!
//! The file is untrusted input. Every count and length read from it is checked against the
//! bytes left (and against a hard cap) before anything is allocated, all arithmetic on its
//! values is checked, and a file llama.cpp could mis-handle is refused with a
//! `GgufError::Invalid` that names the field or tensor at fault, never a panic or a huge
//! allocation. What is checked, and why, is listed at `parse_gguf_bytes`. It reads no tensor
//! data and knows nothing of hearth: only std, `thiserror` and `serde_json`, because the fuzz
//! crate (`fuzz/`) compiles this one file on its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
/// Magic, version, tensor count and metadata count.
const HEADER_LEN: u64 = 24;
/// Arrays longer than this keep only their element type and length: tokenizer vocabularies
/// are large and nobody reads them from here.
const MAX_KEPT_ARRAY: u64 = 64;
/// At most this many dimensions per tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Hard caps on the header counts, whatever the file size.
pub const MAX_TENSORS: u64 = 65_536;
pub const MAX_KV: u64 = 65_536;
const MAX_KEY_LEN: u64 = 65_535;
/// GGML_MAX_NAME is 64 bytes including the terminating NUL.
const MAX_TENSOR_NAME_LEN: u64 = 63;
/// A single metadata string hearth keeps in memory (chat templates, embedded tokenizer JSON).
const MAX_STRING_LEN: u64 = 64 << 20;
const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp accepts any power of two (#24997); larger values only serve to waste memory.
const MAX_ALIGNMENT: u64 = 1 << 20;
/// LLAMA_MAX_LAYERS: llama.cpp's per-layer arrays have this many entries (#25821).
const MAX_LAYERS: u64 = 512;
/// LLAMA_MAX_EXPERTS in the llama.cpp hearth links.
const MAX_EXPERTS: u64 = 1024;
const MAX_VOCAB: u64 = 1 << 24;

/// GGUF metadata value types.
mod vt {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    pub fn is_integer(t: u32) -> bool {
        matches!(t, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
    }

    pub fn name(t: u32) -> &'static str {
        match t {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            BOOL => "bool",
            STRING => "string",
            ARRAY => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
            _ => "unknown",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    BadVersion(u32),
    #[error("invalid GGUF: {0}")]
    Invalid(String),
}

/// What a GGUF file must be, beyond well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufKind {
    /// A model llama.cpp can load: an architecture, a tokenizer vocabulary and tensors; not an
    /// adapter.
    Model,
    /// A LoRA adapter (`general.type` = `adapter`) with tensors.
    Adapter,
    /// Any well-formed GGUF (vocabulary-only files, projectors, test files).
    Any,
}

/// One metadata value. Long arrays are summarised by their element type and length.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<GgufValue>),
    LongArray { elem_type: u32, len: u64 },
}

impl GgufValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::Uint(v) => Some(v),
            GgufValue::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as JSON, as `/api/show` prints it; long arrays become `null` like Ollama's.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            GgufValue::Int(v) => Value::from(*v),
            GgufValue::Uint(v) => Value::from(*v),
            GgufValue::Float(v) => Value::from(*v),
            GgufValue::Bool(v) => Value::from(*v),
            GgufValue::Str(s) => Value::from(s.as_str()),
            GgufValue::Array(items) => Value::Array(items.iter().map(GgufValue::to_json).collect()),
            GgufValue::LongArray { .. } => Value::Null,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset of the tensor's data from the start of the data section.
    pub offset: u64,
}

/// What hearth knows about a GGUF file before loading it.
#[derive(Debug, Clone)]
pub struct GgufInfo {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    pub file_size: u64,
}

impl GgufInfo {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> &str {
        self.get_str("general.architecture").unwrap_or("unknown")
    }

    /// An architecture-scoped hyper-parameter such as `context_length`.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        self.get(&format!("{}.{key}", self.architecture()))
            .and_then(GgufValue::as_u64)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.get_str("tokenizer.chat_template")
    }

    /// Total number of weights, from the tensor directory.
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.dims.iter().fold(1u64, |a, d| a.saturating_mul(*d)))
            .fold(0u64, u64::saturating_add)
    }

    /// Bytes of tensor data, from each tensor's shape and type; `None` if a type is unknown.
    pub fn tensor_bytes(&self) -> Option<u64> {
        self.tensors.iter().try_fold(0u64, |acc, t| {
            let (block, size) = ggml_type_size(t.ggml_type)?;
            let elems = t.dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d))?;
            acc.checked_add(elems.div_ceil(block).checked_mul(size)?)
        })
    }

    /// Vocabulary size, from the tokenizer's token list.
    pub fn vocab_size(&self) -> u64 {
        match self.get("tokenizer.ggml.tokens") {
            Some(GgufValue::LongArray { len, .. }) => *len,
            Some(GgufValue::Array(items)) => items.len() as u64,
            _ => 0,
        }
    }

    /// A human size label such as `135M` (Ollama's `parameter_size`).
    pub fn parameter_size(&self) -> String {
        let n = self.parameter_count() as f64;
        if n >= 1e9 {
            format!("{:.1}B", n / 1e9)
        } else if n >= 1e6 {
            format!("{:.0}M", n / 1e6)
        } else {
            format!("{:.0}K", n / 1e3)
        }
    }

    /// Ollama's `quantization_level`, from `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn quantization_level(&self) -> String {
        let ftype = self.get("general.file_type").and_then(GgufValue::as_u64);
        ftype_name(ftype).to_string()
    }

    /// `Adapter` when `general.type` is `adapter`, else `Model`.
    pub fn declared_kind(&self) -> GgufKind {
        if self.get_str("general.type") == Some("adapter") {
            GgufKind::Adapter
        } else {
            GgufKind::Model
        }
    }

    /// Checks that a well-formed file is also a `kind`: a model needs an architecture, a
    /// tokenizer vocabulary and at least one tensor, and must not be an adapter; an adapter
    /// needs `general.type` = `adapter` and tensors. Whether the tensors a given architecture
    /// needs are all present is llama.cpp's to say (it fails cleanly when one is missing).
    pub fn check_kind(&self, kind: GgufKind) -> Result<(), GgufError> {
        let file_type = self.get_str("general.type");
        match kind {
            GgufKind::Any => Ok(()),
            GgufKind::Model => {
                if file_type == Some("adapter") {
                    return Err(invalid("general.type is \"adapter\": a LoRA adapter, not a model"));
                }
                match self.get_str("general.architecture") {
                    Some(a) if !a.is_empty() => {}
                    _ => return Err(invalid("a model needs general.architecture (a non-empty string)")),
                }
                if self.vocab_size() == 0 {
                    return Err(invalid("a model needs a tokenizer vocabulary (tokenizer.ggml.tokens)"));
                }
                if self.tensors.is_empty() {
                    return Err(invalid("a model needs tensors and this file has none"));
                }
                Ok(())
            }
            GgufKind::Adapter => {
                if file_type != Some("adapter") {
                    return Err(invalid(format!(
                        "general.type is {}, not \"adapter\": not a LoRA adapter",
                        file_type.map_or("missing".to_string(), |t| format!("{t:?}"))
                    )));
                }
                if self.tensors.is_empty() {
                    return Err(invalid("an adapter needs tensors and this file has none"));
                }
                Ok(())
            }
        }
    }
}

fn ftype_name(ftype: Option<u64>) -> &'static str {
    match ftype {
        Some(0) => "F32",
        Some(1) => "F16",
        Some(2) => "Q4_0",
        Some(3) => "Q4_1",
        Some(7) => "Q8_0",
        Some(8) => "Q5_0",
        Some(9) => "Q5_1",
        Some(10) => "Q2_K",
        Some(11) => "Q3_K_S",
        Some(12) => "Q3_K_M",
        Some(13) => "Q3_K_L",
        Some(14) => "Q4_K_S",
        Some(15) => "Q4_K_M",
        Some(16) => "Q5_K_S",
        Some(17) => "Q5_K_M",
        Some(18) => "Q6_K",
        Some(19) => "IQ2_XXS",
        Some(20) => "IQ2_XS",
        Some(21) => "Q2_K_S",
        Some(22) => "IQ3_XS",
        Some(23) => "IQ3_XXS",
        Some(24) => "IQ1_S",
        Some(25) => "IQ4_NL",
        Some(26) => "IQ3_S",
        Some(27) => "IQ3_M",
        Some(28) => "IQ2_S",
        Some(29) => "IQ2_M",
        Some(30) => "IQ4_XS",
        Some(31) => "IQ1_M",
        Some(32) => "BF16",
        Some(36) => "TQ1_0",
        Some(37) => "TQ2_0",
        Some(38) => "MXFP4",
        _ => "unknown",
    }
}

/// (elements per block, bytes per block) of a ggml tensor type, as ggml lays them out.
pub fn ggml_type_size(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        _ => return None,
    })
}

/// Reads and validates the GGUF file at `path` as what it says it is: a LoRA adapter when
/// `general.type` is `adapter`, else a model (see `GgufInfo::check_kind`). Callers that need
/// one kind in particular (the model load path) use `read_gguf_as`.
pub fn read_gguf(path: &Path) -> Result<GgufInfo, GgufError> {
    let info = read_gguf_as(path, GgufKind::Any)?;
    info.check_kind(info.declared_kind())?;
    Ok(info)
}

/// Reads the header, metadata and tensor directory of the GGUF file at `path`, validates them
/// (see `parse_gguf_bytes`), and checks the file is a `kind`.
pub fn read_gguf_as(path: &Path, kind: GgufKind) -> Result<GgufInfo, GgufError> {
    let io = |source| GgufError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_size = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut r = Reader {
        inner: BufReader::new(file),
        left: file_size,
    };
    let info = parse(&mut r, file_size)?;
    info.check_kind(kind)?;
    Ok(info)
}

/// Parses and validates a whole GGUF file held in memory (the fuzzer's entry point). It checks
/// only that the file is well-formed (`GgufKind::Any`); `GgufInfo::check_kind` adds the rest.
///
/// Checks, each refusing the file with a message naming what is wrong:
/// - magic `GGUF`, version 2 or 3; tensor and metadata counts at most 65536 each and small
///   enough for the bytes left;
/// - metadata: known value types; arrays of known, non-array element types whose length fits
///   the file; keys 1..=65535 bytes of UTF-8 without NUL, unique; kept strings UTF-8 and at
///   most 64 MiB (strings inside long arrays, such as a vocabulary, are only length-checked:
///   llama.cpp accepts any bytes there); `general.alignment` a u32 power of two ≤ 1 MiB;
///   `general.architecture`/`general.type` strings;
/// - tensors: names 1..=63 bytes without NUL, unique; 1..=4 dimensions, each > 0, element
///   count ≤ i64::MAX; a known type whose block size divides `dims[0]`; byte size by checked
///   arithmetic; offset a multiple of the alignment; data inside the file, counted from the
///   header end rounded up to the alignment; no two tensors overlapping;
/// - tokenizer: `tokenizer.ggml.tokens` an array of 1..=2^24 strings; `scores` f32 and
///   `token_type` i32 arrays of the same length; `merges` an array of strings; every
///   `tokenizer.ggml.*_token_id` a non-negative integer below the vocabulary size;
/// - hyper-parameters of `general.architecture`, ranges only (see `HPARAMS`), and
///   `expert_used_count` ≤ `expert_count`.
pub fn parse_gguf_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
    let mut r = Reader {
        inner: bytes,
        left: bytes.len() as u64,
    };
    parse(&mut r, bytes.len() as u64)
}

/// How a metadata value was declared in the file; long arrays keep no items, so the checks
/// read element types and lengths from here.
#[derive(Debug, Clone, Copy)]
struct Declared {
    vtype: u32,
    /// Element type and length, for arrays.
    array: Option<(u32, u64)>,
}

/// The metadata with the types the file declared.
struct Meta<'a> {
    values: &'a BTreeMap<String, GgufValue>,
    declared: &'a HashMap<String, Declared>,
}

fn parse<R: Read>(r: &mut Reader<R>, file_size: u64) -> Result<GgufInfo, GgufError> {
    let mut magic = [0u8; 4];
    if file_size < MAGIC.len() as u64 {
        return Err(invalid(format!(
            "file is {file_size} bytes, too short for a GGUF header"
        )));
    }
    r.bytes_into(&mut magic)?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic);
    }
    if file_size < HEADER_LEN {
        return Err(invalid(format!(
            "file is {file_size} bytes, too short for a GGUF header"
        )));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::BadVersion(version));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    if n_kv > MAX_KV {
        return Err(invalid(format!("metadata count {n_kv} is over the limit of {MAX_KV}")));
    }
    if n_tensors > MAX_TENSORS {
        return Err(invalid(format!(
            "tensor count {n_tensors} is over the limit of {MAX_TENSORS}"
        )));
    }
    // Each KV pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes; each
    // tensor at least 8 + 1 (name) + 4 (n_dims) + 8 (one dim) + 4 (type) + 8 (offset).
    r.bound(n_kv, 14, "metadata count")?;
    r.bound(n_tensors, 33, "tensor count")?;

    let mut metadata = BTreeMap::new();
    let mut declared = HashMap::new();
    for i in 0..n_kv {
        let key = r
            .name(MAX_KEY_LEN, "metadata key")
            .map_err(|e| context(&format!("metadata key #{i}"), e))?;
        if metadata.contains_key(&key) {
            return Err(invalid(format!("metadata key {key:?} appears twice")));
        }
        let (value, decl) = r
            .u32()
            .and_then(|vtype| r.value(vtype, keep_limit(&key)))
            .map_err(|e| context(&format!("metadata {key:?}"), e))?;
        declared.insert(key.clone(), decl);
        metadata.insert(key, value);
    }
    let meta = Meta {
        values: &metadata,
        declared: &declared,
    };
    let alignment = meta.alignment()?;

    let mut tensors = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0));
    let mut sizes = Vec::with_capacity(tensors.capacity());
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = r
            .name(MAX_TENSOR_NAME_LEN, "name")
            .map_err(|e| context(&format!("tensor #{i}"), e))?;
        if !names.insert(name.clone()) {
            return Err(invalid(format!("tensor name {name:?} appears twice")));
        }
        let (tensor, nbytes) = r
            .tensor_info(name.clone(), alignment)
            .map_err(|e| context(&format!("tensor {name:?}"), e))?;
        tensors.push(tensor);
        sizes.push(nbytes);
    }

    // The data section starts at the end of the header, rounded up to the alignment.
    let header_end = file_size.saturating_sub(r.left);
    let data_start = align_up(header_end, alignment)
        .ok_or_else(|| invalid(format!("data section start overflows (header ends at {header_end})")))?;
    check_tensor_data(&tensors, &sizes, data_start, file_size)?;
    meta.check_general()?;
    meta.check_tokenizer()?;
    meta.check_hparams()?;
    Ok(GgufInfo {
        version,
        metadata,
        tensors,
        file_size,
    })
}

/// Every tensor's bytes lie inside the file and no two tensors share a byte.
fn check_tensor_data(tensors: &[TensorInfo], sizes: &[u64], data_start: u64, file_size: u64) -> Result<(), GgufError> {
    for (t, &nbytes) in tensors.iter().zip(sizes) {
        let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(nbytes));
        if end.is_none_or(|end| end > file_size) {
            return Err(invalid(format!(
                "tensor {:?} data (offset {}, {nbytes} bytes) runs past the end of the file \
                 ({file_size} bytes, data section at {data_start})",
                t.name, t.offset
            )));
        }
    }
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .zip(sizes)
        .map(|(t, &n)| (t.offset, n, t.name.as_str()))
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let [(a_off, a_len, a_name), (b_off, _, b_name)] = pair else {
            continue;
        };
        // Both ends are inside the file (checked above), so this cannot overflow.
        if a_off.saturating_add(*a_len) > *b_off {
            return Err(invalid(format!(
                "tensors {a_name:?} (offset {a_off}, {a_len} bytes) and {b_name:?} (offset {b_off}) overlap"
            )));
        }
    }
    Ok(())
}

/// Arrays kept item by item: the short ones, and the per-layer hyper-parameters (whose values
/// are range-checked).
fn keep_limit(key: &str) -> u64 {
    let per_layer = HPARAMS
        .iter()
        .any(|h| h.per_layer && key.strip_suffix(h.suffix).is_some_and(|k| k.ends_with('.')));
    if per_layer {
        MAX_LAYERS
    } else {
        MAX_KEPT_ARRAY
    }
}

fn align_up(n: u64, alignment: u64) -> Option<u64> {
    n.checked_next_multiple_of(alignment)
}

/// A hyper-parameter range check: `{arch}.{suffix}` must be an integer in `min..=max` (or,
/// when `per_layer`, an array of at most 512 such integers).
struct HparamRange {
    suffix: &'static str,
    min: u64,
    max: u64,
    per_layer: bool,
}

/// Ranges generous enough for every model llama.cpp supports; they exist to keep absurd values
/// (which llama.cpp turns into out-of-bounds writes or huge allocations) out, not to judge
/// models. Zero is allowed where some architectures write it (Mamba has no attention heads).
const HPARAMS: &[HparamRange] = &[
    HparamRange {
        suffix: "block_count",
        min: 1,
        max: MAX_LAYERS,
        per_layer: false,
    },
    HparamRange {
        suffix: "context_length",
        min: 1,
        max: 1 << 24,
        per_layer: false,
    },
    HparamRange {
        suffix: "embedding_length",
        min: 1,
        max: 1 << 20,
        per_layer: false,
    },
    HparamRange {
        suffix: "feed_forward_length",
        min: 0,
        max: 1 << 20,
        per_layer: true,
    },
    HparamRange {
        suffix: "attention.head_count",
        min: 0,
        max: 16_384,
        per_layer: true,
    },
    HparamRange {
        suffix: "attention.head_count_kv",
        min: 0,
        max: 16_384,
        per_layer: true,
    },
    HparamRange {
        suffix: "attention.key_length",
        min: 0,
        max: 1 << 16,
        per_layer: false,
    },
    HparamRange {
        suffix: "attention.value_length",
        min: 0,
        max: 1 << 16,
        per_layer: false,
    },
    HparamRange {
        suffix: "rope.dimension_count",
        min: 0,
        max: 1 << 16,
        per_layer: false,
    },
    HparamRange {
        suffix: "expert_count",
        min: 0,
        max: MAX_EXPERTS,
        per_layer: false,
    },
    HparamRange {
        suffix: "expert_used_count",
        min: 0,
        max: MAX_EXPERTS,
        per_layer: false,
    },
    HparamRange {
        suffix: "vocab_size",
        min: 0,
        max: MAX_VOCAB,
        per_layer: false,
    },
];

impl Meta<'_> {
    fn declared(&self, key: &str) -> Option<Declared> {
        self.declared.get(key).copied()
    }

    /// `general.alignment`: absent (32), or a u32 power of two no larger than 1 MiB.
    fn alignment(&self) -> Result<u64, GgufError> {
        const KEY: &str = "general.alignment";
        let Some(decl) = self.declared(KEY) else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        if decl.vtype != vt::U32 {
            return Err(invalid(format!("{KEY} must be a u32, not {}", type_name(decl))));
        }
        let a = self.values.get(KEY).and_then(GgufValue::as_u64).unwrap_or(0);
        if !a.is_power_of_two() || a > MAX_ALIGNMENT {
            return Err(invalid(format!(
                "{KEY} {a} must be a power of two no larger than {MAX_ALIGNMENT}"
            )));
        }
        Ok(a)
    }

    fn check_general(&self) -> Result<(), GgufError> {
        for key in ["general.architecture", "general.type"] {
            if let Some(decl) = self.declared(key) {
                if decl.vtype != vt::STRING {
                    return Err(invalid(format!("{key} must be a string, not {}", type_name(decl))));
                }
            }
        }
        Ok(())
    }

    /// The tokenizer arrays have the types llama.cpp reads them as (it casts their data
    /// blindly), matching lengths, and the special token ids index into the vocabulary.
    fn check_tokenizer(&self) -> Result<(), GgufError> {
        let vocab = match self.declared("tokenizer.ggml.tokens") {
            None => None,
            Some(Declared {
                array: Some((vt::STRING, n)),
                ..
            }) => {
                if !(1..=MAX_VOCAB).contains(&n) {
                    return Err(invalid(format!(
                        "tokenizer.ggml.tokens has {n} tokens (1..={MAX_VOCAB} allowed)"
                    )));
                }
                Some(n)
            }
            Some(decl) => {
                return Err(invalid(format!(
                    "tokenizer.ggml.tokens must be an array of strings, not {}",
                    type_name(decl)
                )))
            }
        };
        for (key, elem) in [
            ("tokenizer.ggml.scores", vt::F32),
            ("tokenizer.ggml.token_type", vt::I32),
        ] {
            let Some(decl) = self.declared(key) else { continue };
            match (decl.array, vocab) {
                (Some((e, n)), Some(v)) if e == elem && n == v => {}
                (Some((e, n)), Some(v)) if e == elem => {
                    return Err(invalid(format!(
                        "{key} has {n} entries but the vocabulary has {v} tokens"
                    )));
                }
                (Some((e, _)), None) if e == elem => {
                    return Err(invalid(format!("{key} without tokenizer.ggml.tokens")));
                }
                _ => {
                    return Err(invalid(format!(
                        "{key} must be an array of {}, not {}",
                        vt::name(elem),
                        type_name(decl)
                    )))
                }
            }
        }
        if let Some(decl) = self.declared("tokenizer.ggml.merges") {
            if !matches!(decl.array, Some((vt::STRING, _))) {
                return Err(invalid(format!(
                    "tokenizer.ggml.merges must be an array of strings, not {}",
                    type_name(decl)
                )));
            }
        }
        let ids = self
            .values
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer.ggml.") && k.ends_with("_token_id"));
        for (key, value) in ids {
            let is_int = self.declared(key).is_some_and(|d| vt::is_integer(d.vtype));
            let id = value.as_u64().filter(|_| is_int);
            match (id, vocab) {
                (None, _) => {
                    return Err(invalid(format!(
                        "{key} must be a non-negative integer, not {}",
                        describe(value)
                    )));
                }
                (Some(id), Some(v)) if id >= v => {
                    return Err(invalid(format!("{key} {id} is not below the vocabulary size {v}")));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Range checks on the architecture's hyper-parameters (`HPARAMS`).
    fn check_hparams(&self) -> Result<(), GgufError> {
        let Some(arch) = self.values.get("general.architecture").and_then(GgufValue::as_str) else {
            return Ok(());
        };
        let mut found = HashMap::new();
        for h in HPARAMS {
            let key = format!("{arch}.{}", h.suffix);
            let (Some(value), Some(decl)) = (self.values.get(&key), self.declared(&key)) else {
                continue;
            };
            let values: Vec<&GgufValue> = match (value, decl.array) {
                (GgufValue::Array(items), Some((elem, _))) if h.per_layer && vt::is_integer(elem) => {
                    items.iter().collect()
                }
                (_, Some((_, n))) if h.per_layer && n > MAX_LAYERS => {
                    return Err(invalid(format!(
                        "{key} has {n} per-layer values (at most {MAX_LAYERS})"
                    )));
                }
                (_, None) if vt::is_integer(decl.vtype) => vec![value],
                _ => {
                    let want = if h.per_layer {
                        "an integer or an array of integers"
                    } else {
                        "an integer"
                    };
                    return Err(invalid(format!("{key} must be {want}, not {}", type_name(decl))));
                }
            };
            for v in values {
                match v.as_u64() {
                    Some(n) if (h.min..=h.max).contains(&n) => {
                        found.insert(h.suffix, n);
                    }
                    _ => {
                        return Err(invalid(format!(
                            "{key} is {}, outside {}..={}",
                            describe(v),
                            h.min,
                            h.max
                        )))
                    }
                }
            }
        }
        if let (Some(used), Some(count)) = (found.get("expert_used_count"), found.get("expert_count")) {
            if used > count {
                return Err(invalid(format!(
                    "{arch}.expert_used_count {used} is larger than {arch}.expert_count {count}"
                )));
            }
        }
        Ok(())
    }
}

fn type_name(decl: Declared) -> String {
    match decl.array {
        Some((elem, n)) => format!("an array of {n} {}", vt::name(elem)),
        None => vt::name(decl.vtype).to_string(),
    }
}

fn describe(v: &GgufValue) -> String {
    match v {
        GgufValue::Int(n) => n.to_string(),
        GgufValue::Uint(n) => n.to_string(),
        GgufValue::Float(f) => format!("the float {f}"),
        GgufValue::Bool(b) => format!("the bool {b}"),
        GgufValue::Str(_) => "a string".to_string(),
        GgufValue::Array(_) | GgufValue::LongArray { .. } => "an array".to_string(),
    }
}

fn invalid(msg: impl Into<String>) -> GgufError {
    GgufError::Invalid(msg.into())
}

/// Prefixes an `Invalid` message with where in the file it happened.
fn context(place: &str, e: GgufError) -> GgufError {
    match e {
        GgufError::Invalid(msg) => GgufError::Invalid(format!("{place}: {msg}")),
        other => other,
    }
}

/// A reader that knows how many bytes remain, so lengths can be bounded before allocating.
struct Reader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Reader<R> {
    fn bytes_into(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        if (buf.len() as u64) > self.left {
            return Err(invalid("the file ends early (truncated?)"));
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| invalid(format!("read failed: {e}")))?;
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what is left.
    fn bound(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.left => Ok(()),
            _ => Err(invalid(format!(
                "{what} {count} does not fit in the {} bytes left in the file",
                self.left
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8, GgufError> {
        let mut b = [0u8; 1];
        self.bytes_into(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> Result<u16, GgufError> {
        let mut b = [0u8; 2];
        self.bytes_into(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.bytes_into(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.bytes_into(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    fn string(&mut self, max: u64, what: &str) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > max {
            return Err(invalid(format!("{what} is {len} bytes long (at most {max})")));
        }
        self.bound(len, 1, &format!("{what} length"))?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| invalid(format!("{what} too long")))?];
        self.bytes_into(&mut buf)?;
        String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }

    /// A key or tensor name: non-empty, at most `max` bytes, no NUL (C code would cut it short
    /// there, so two distinct names could look the same to llama.cpp).
    fn name(&mut self, max: u64, what: &str) -> Result<String, GgufError> {
        let s = self.string(max, what)?;
        if s.is_empty() {
            return Err(invalid(format!("{what} is empty")));
        }
        if s.contains('\0') {
            return Err(invalid(format!("{what} {s:?} contains a NUL byte")));
        }
        Ok(s)
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if n > self.left {
            return Err(invalid("the file ends early (truncated?)"));
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| invalid(format!("read failed: {e}")))?;
        if copied != n {
            return Err(invalid("the file ends early (truncated?)"));
        }
        self.left -= n;
        Ok(())
    }

    /// A value of type `vtype`; arrays longer than `keep` keep only their type and length.
    fn value(&mut self, vtype: u32, keep: u64) -> Result<(GgufValue, Declared), GgufError> {
        if vtype != vt::ARRAY {
            let value = self.scalar(vtype)?;
            return Ok((value, Declared { vtype, array: None }));
        }
        let elem_type = self.u32()?;
        if elem_type == vt::ARRAY {
            return Err(invalid("nested arrays are not supported"));
        }
        let size = match fixed_size(elem_type) {
            Some(size) => size,
            // Each string has at least its 8-byte length.
            None if elem_type == vt::STRING => 8,
            None => return Err(invalid(format!("unknown array element type {elem_type}"))),
        };
        let len = self.u64()?;
        self.bound(len, size, "array length")?;
        let value = if len <= keep {
            let mut items = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            for _ in 0..len {
                items.push(self.scalar(elem_type)?);
            }
            GgufValue::Array(items)
        } else if elem_type == vt::STRING {
            for i in 0..len {
                let n = self.u64()?;
                self.bound(n, 1, &format!("array string #{i} length"))?;
                self.skip(n)?;
            }
            GgufValue::LongArray { elem_type, len }
        } else {
            // `bound` checked this product fits in what is left.
            self.skip(len.saturating_mul(size))?;
            GgufValue::LongArray { elem_type, len }
        };
        Ok((
            value,
            Declared {
                vtype,
                array: Some((elem_type, len)),
            },
        ))
    }

    fn scalar(&mut self, vtype: u32) -> Result<GgufValue, GgufError> {
        Ok(match vtype {
            vt::U8 => GgufValue::Uint(u64::from(self.u8()?)),
            vt::I8 => GgufValue::Int(i64::from(self.u8()? as i8)),
            vt::U16 => GgufValue::Uint(u64::from(self.u16()?)),
            vt::I16 => GgufValue::Int(i64::from(self.u16()? as i16)),
            vt::U32 => GgufValue::Uint(u64::from(self.u32()?)),
            vt::I32 => GgufValue::Int(i64::from(self.u32()? as i32)),
            vt::F32 => GgufValue::Float(f64::from(f32::from_bits(self.u32()?))),
            vt::BOOL => GgufValue::Bool(self.u8()? != 0),
            vt::STRING => GgufValue::Str(self.string(MAX_STRING_LEN, "string value")?),
            vt::U64 => GgufValue::Uint(self.u64()?),
            vt::I64 => GgufValue::Int(self.u64()? as i64),
            vt::F64 => GgufValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(invalid(format!("unknown metadata value type {other}"))),
        })
    }

    /// One tensor directory entry after its name, and the tensor's size in bytes.
    fn tensor_info(&mut self, name: String, alignment: u64) -> Result<(TensorInfo, u64), GgufError> {
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(invalid(format!("{n_dims} dimensions (1..={MAX_DIMS} allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for i in 0..n_dims {
            let d = self.u64()?;
            if d == 0 || d > i64::MAX as u64 {
                return Err(invalid(format!("dimension {i} is {d} (1..={} allowed)", i64::MAX)));
            }
            dims.push(d);
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(*d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| invalid(format!("shape {dims:?} has more than {} elements", i64::MAX)))?;
        let ggml_type = self.u32()?;
        let (block, block_bytes) =
            ggml_type_size(ggml_type).ok_or_else(|| invalid(format!("unknown ggml type {ggml_type}")))?;
        let row = dims.first().copied().unwrap_or(0);
        if row % block != 0 {
            return Err(invalid(format!(
                "row length {row} is not a multiple of the block size {block} of ggml type {ggml_type}"
            )));
        }
        let nbytes = (elems / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| invalid(format!("shape {dims:?} overflows its size in bytes")))?;
        let offset = self.u64()?;
        if offset % alignment != 0 {
            return Err(invalid(format!(
                "offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        Ok((
            TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            },
            nbytes,
        ))
    }
}

/// Byte size of a fixed-size GGUF value type; `None` for strings, arrays and unknown types.
fn fixed_size(vtype: u32) -> Option<u64> {
    match vtype {
        vt::U8 | vt::I8 | vt::BOOL => Some(1),
        vt::U16 | vt::I16 => Some(2),
        vt::U32 | vt::I32 | vt::F32 => Some(4),
        vt::U64 | vt::I64 | vt::F64 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ------------------------------------------------------------ a small GGUF writer

    fn p_u32(n: u32) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn p_str(s: &[u8]) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s);
        b
    }

    /// A typed scalar: type tag then payload.
    fn scalar(vtype: u32, payload: Vec<u8>) -> Vec<u8> {
        let mut b = vtype.to_le_bytes().to_vec();
        b.extend(payload);
        b
    }

    fn v_u32(n: u32) -> Vec<u8> {
        scalar(vt::U32, p_u32(n))
    }

    fn v_str(s: &str) -> Vec<u8> {
        scalar(vt::STRING, p_str(s.as_bytes()))
    }

    fn v_arr(elem: u32, items: Vec<Vec<u8>>) -> Vec<u8> {
        let mut b = vt::ARRAY.to_le_bytes().to_vec();
        b.extend(elem.to_le_bytes());
        b.extend((items.len() as u64).to_le_bytes());
        for i in items {
            b.extend(i);
        }
        b
    }

    fn tokens(n: usize) -> Vec<u8> {
        v_arr(vt::STRING, (0..n).map(|i| p_str(format!("t{i}").as_bytes())).collect())
    }

    #[derive(Clone)]
    struct Tensor {
        name: Vec<u8>,
        dims: Vec<u64>,
        ggml_type: u32,
        /// `None`: placed after the previous tensor, aligned.
        offset: Option<u64>,
    }

    #[derive(Clone)]
    struct Builder {
        kvs: Vec<(Vec<u8>, Vec<u8>)>,
        tensors: Vec<Tensor>,
        alignment: u64,
        /// Bytes of tensor data actually written (default: exactly what the tensors need).
        data_len: Option<u64>,
    }

    impl Builder {
        fn empty() -> Builder {
            Builder {
                kvs: Vec::new(),
                tensors: Vec::new(),
                alignment: 32,
                data_len: None,
            }
        }

        /// A tiny model that passes every check.
        fn model() -> Builder {
            let mut b = Builder::empty();
            b.set("general.architecture", v_str("llama"));
            b.set("general.type", v_str("model"));
            b.set("llama.block_count", v_u32(2));
            b.set("llama.context_length", v_u32(64));
            b.set("llama.embedding_length", v_u32(32));
            b.set("llama.feed_forward_length", v_u32(64));
            b.set("llama.attention.head_count", v_u32(4));
            b.set("llama.attention.head_count_kv", v_u32(2));
            b.set("tokenizer.ggml.model", v_str("llama"));
            b.set("tokenizer.ggml.tokens", tokens(4));
            b.set(
                "tokenizer.ggml.scores",
                v_arr(vt::F32, vec![0f32.to_le_bytes().to_vec(); 4]),
            );
            b.set(
                "tokenizer.ggml.token_type",
                v_arr(vt::I32, vec![1i32.to_le_bytes().to_vec(); 4]),
            );
            b.set("tokenizer.ggml.bos_token_id", v_u32(1));
            b.set("tokenizer.ggml.eos_token_id", v_u32(2));
            b.tensor("token_embd.weight", &[32, 4], 0);
            b.tensor("output_norm.weight", &[32], 0);
            b.tensor("blk.0.attn_q.weight", &[32, 32], 8); // Q8_0
            b
        }

        fn set(&mut self, key: &str, value: Vec<u8>) -> &mut Builder {
            match self.kvs.iter_mut().find(|(k, _)| k == key.as_bytes()) {
                Some(kv) => kv.1 = value,
                None => self.kvs.push((key.as_bytes().to_vec(), value)),
            }
            self
        }

        fn remove(&mut self, key: &str) -> &mut Builder {
            self.kvs.retain(|(k, _)| k != key.as_bytes());
            self
        }

        fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32) -> &mut Tensor {
            self.tensors.push(Tensor {
                name: name.as_bytes().to_vec(),
                dims: dims.to_vec(),
                ggml_type,
                offset: None,
            });
            self.tensors.last_mut().expect("just pushed")
        }

        fn bytes(&self) -> Vec<u8> {
            let mut b = b"GGUF".to_vec();
            b.extend(3u32.to_le_bytes());
            b.extend((self.tensors.len() as u64).to_le_bytes());
            b.extend((self.kvs.len() as u64).to_le_bytes());
            for (k, v) in &self.kvs {
                b.extend(p_str(k));
                b.extend(v);
            }
            let mut next = 0u64;
            let mut end = 0u64;
            for t in &self.tensors {
                b.extend(p_str(&t.name));
                b.extend((t.dims.len() as u32).to_le_bytes());
                for d in &t.dims {
                    b.extend(d.to_le_bytes());
                }
                b.extend(t.ggml_type.to_le_bytes());
                let offset = t.offset.unwrap_or(next);
                b.extend(offset.to_le_bytes());
                let nbytes = ggml_type_size(t.ggml_type)
                    .and_then(|(blk, size)| {
                        let n = t.dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d))?;
                        (n / blk).checked_mul(size)
                    })
                    .unwrap_or(0);
                let t_end = offset.saturating_add(nbytes);
                next = align_up(t_end, self.alignment).unwrap_or(u64::MAX);
                if t.offset.is_none() {
                    end = end.max(t_end);
                }
            }
            while b.len() as u64 % self.alignment != 0 {
                b.push(0);
            }
            // Tensors placed by hand get no data of their own: a far one runs past the end.
            let data = self.data_len.unwrap_or(end);
            b.resize(b.len() + data as usize, 0);
            b
        }

        fn parse(&self) -> Result<GgufInfo, GgufError> {
            parse_gguf_bytes(&self.bytes())
        }

        fn parse_model(&self) -> Result<GgufInfo, GgufError> {
            let info = self.parse()?;
            info.check_kind(GgufKind::Model)?;
            Ok(info)
        }
    }

    /// Asserts `b` is refused as a model with a message containing every one of `needles`.
    fn refused(b: &Builder, needles: &[&str]) {
        refused_bytes(&b.bytes(), needles, true);
    }

    fn refused_bytes(bytes: &[u8], needles: &[&str], as_model: bool) {
        let result = parse_gguf_bytes(bytes).and_then(|i| {
            if as_model {
                i.check_kind(GgufKind::Model)
            } else {
                Ok(())
            }
        });
        let err = result.expect_err("must be refused").to_string();
        for n in needles {
            assert!(err.contains(n), "error {err:?} should mention {n:?}");
        }
    }

    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    }

    // ------------------------------------------------------------ well-formed files

    #[test]
    fn a_small_model_passes_and_reads_back() {
        let info = Builder::model().parse_model().expect("valid");
        assert_eq!(info.architecture(), "llama");
        assert_eq!(info.vocab_size(), 4);
        assert_eq!(info.tensors.len(), 3);
        assert_eq!(info.tensors[1].offset, 512);
        assert_eq!(info.arch_u64("block_count"), Some(2));
        assert_eq!(info.tensor_bytes(), Some(32 * 4 * 4 + 32 * 4 + 32 * 32 / 32 * 34));
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
}
