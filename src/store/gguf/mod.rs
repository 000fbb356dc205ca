//! Reads and validates a GGUF file's header, metadata and tensor directory in Rust, before
//! llama.cpp's C++ parser (a long history of CVEs) ever sees the file.
//!
//! The file is untrusted input. Every count and length read from it is checked against the
//! bytes left (and against a hard cap) before anything is allocated, all arithmetic on its
//! values is checked, and a file llama.cpp could mis-handle is refused with a
//! `GgufError::Invalid` that names the field or tensor at fault, never a panic or a huge
//! allocation. What is checked, and why, is listed at `parse_gguf_bytes`. It reads no tensor
//! data and knows nothing of hearth: only std, `thiserror` and `serde_json`, because the fuzz
//! crate (`fuzz/`) compiles this folder on its own.

//!
//! Here: the entry points, the parse and the tensor-data check. `reader` reads the file's
//! primitives within bounds, `checks` the metadata's keys and hyper-parameters, `info` is what
//! a valid file yields.

mod checks;
mod info;
mod reader;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

pub use info::*;
use checks::HPARAMS;
use reader::Reader;

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
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = r
            .name(MAX_TENSOR_NAME_LEN, "name")
            .map_err(|e| context(&format!("tensor #{i}"), e))?;
        if !names.insert(name.clone()) {
            return Err(invalid(format!("tensor name {name:?} appears twice")));
        }
        let tensor = r
            .tensor_info(name.clone(), alignment)
            .map_err(|e| context(&format!("tensor {name:?}"), e))?;
        tensors.push(tensor);
    }

    // The data section starts at the end of the header, rounded up to the alignment.
    let header_end = file_size.saturating_sub(r.left);
    let data_start = align_up(header_end, alignment)
        .ok_or_else(|| invalid(format!("data section start overflows (header ends at {header_end})")))?;
    check_tensor_data(&tensors, data_start, file_size)?;
    meta.check_general()?;
    meta.check_tokenizer()?;
    meta.check_hparams()?;
    Ok(GgufInfo {
        version,
        metadata,
        tensors,
        file_size,
        data_start,
    })
}

/// Every tensor's bytes lie inside the file and no two tensors share a byte.
fn check_tensor_data(tensors: &[TensorInfo], data_start: u64, file_size: u64) -> Result<(), GgufError> {
    for t in tensors {
        let nbytes = t.nbytes;
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
        .map(|t| (t.offset, t.nbytes, t.name.as_str()))
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

