//! Reads a GGUF file's header, metadata and tensor directory in Rust, without loading tensors.
//!
//! Every count and length read from the file is checked against the bytes left in it before
//! anything is allocated, so a truncated or hostile file yields a `GgufError`, never a huge
//! allocation or a panic. It does not validate tensor data for llama.cpp (that is the store's
//! validator's job); it gives hearth the facts it shows and plans with.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
/// Arrays longer than this keep only their length: tokenizer vocabularies are large and nobody
/// reads them from here.
const MAX_KEPT_ARRAY: u64 = 64;
/// At most this many dimensions per tensor (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

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
            .map(|t| t.dims.iter().product::<u64>())
            .sum()
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

/// Reads the header, metadata and tensor directory of the GGUF file at `path`.
pub fn read_gguf(path: &Path) -> Result<GgufInfo, GgufError> {
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
    parse(&mut r, file_size)
}

fn parse<R: Read>(r: &mut Reader<R>, file_size: u64) -> Result<GgufInfo, GgufError> {
    let mut magic = [0u8; 4];
    r.bytes_into(&mut magic)?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic);
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::BadVersion(version));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Each KV pair takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor at least 8 + 4 + 8 + 4 + 8.
    r.bound(n_kv, 13, "metadata count")?;
    r.bound(n_tensors, 32, "tensor count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let vtype = r.u32()?;
        let value = r.value(vtype, 0)?;
        metadata.insert(key, value);
    }

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = r.string("tensor name")?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(invalid(format!("tensor {name:?} has {n_dims} dimensions (1..=4 allowed)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64()?;
            if d == 0 {
                return Err(invalid(format!("tensor {name:?} has a zero dimension")));
            }
            dims.push(d);
        }
        dims.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d)).ok_or_else(|| {
            invalid(format!("tensor {name:?} has too many elements"))
        })?;
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        if offset >= file_size {
            return Err(invalid(format!("tensor {name:?} starts past the end of the file")));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    Ok(GgufInfo {
        version,
        metadata,
        tensors,
        file_size,
    })
}

fn invalid(msg: String) -> GgufError {
    GgufError::Invalid(msg)
}

/// A reader that knows how many bytes remain, so lengths can be bounded before allocating.
struct Reader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Reader<R> {
    fn bytes_into(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        if (buf.len() as u64) > self.left {
            return Err(invalid("file ends early".to_string()));
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
            _ => Err(invalid(format!("{what} {count} does not fit in the file"))),
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

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64()?;
        self.bound(len, 1, what)?;
        let mut buf = vec![0u8; len as usize];
        self.bytes_into(&mut buf)?;
        String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if n > self.left {
            return Err(invalid("file ends early".to_string()));
        }
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| invalid(format!("read failed: {e}")))?;
        if copied != n {
            return Err(invalid("file ends early".to_string()));
        }
        self.left -= n;
        Ok(())
    }

    fn value(&mut self, vtype: u32, depth: u32) -> Result<GgufValue, GgufError> {
        Ok(match vtype {
            0 => GgufValue::Uint(u64::from(self.u8()?)),
            1 => GgufValue::Int(i64::from(self.u8()? as i8)),
            2 => GgufValue::Uint(u64::from(self.u16()?)),
            3 => GgufValue::Int(i64::from(self.u16()? as i16)),
            4 => GgufValue::Uint(u64::from(self.u32()?)),
            5 => GgufValue::Int(i64::from(self.u32()? as i32)),
            6 => GgufValue::Float(f64::from(f32::from_bits(self.u32()?))),
            7 => GgufValue::Bool(self.u8()? != 0),
            8 => GgufValue::Str(self.string("string value")?),
            9 => {
                if depth > 0 {
                    return Err(invalid("nested arrays are not supported".to_string()));
                }
                let elem_type = self.u32()?;
                let len = self.u64()?;
                let size = fixed_size(elem_type);
                self.bound(len, size.unwrap_or(8), "array length")?;
                if len <= MAX_KEPT_ARRAY {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.value(elem_type, depth + 1)?);
                    }
                    GgufValue::Array(items)
                } else {
                    match size {
                        Some(size) => self.skip(len * size)?,
                        None if elem_type == 8 => {
                            for _ in 0..len {
                                let n = self.u64()?;
                                self.skip(n)?;
                            }
                        }
                        None => return Err(invalid(format!("unknown array element type {elem_type}"))),
                    }
                    GgufValue::LongArray { elem_type, len }
                }
            }
            10 => GgufValue::Uint(self.u64()?),
            11 => GgufValue::Int(self.u64()? as i64),
            12 => GgufValue::Float(f64::from_bits(self.u64()?)),
            other => return Err(invalid(format!("unknown metadata value type {other}"))),
        })
    }
}

/// Byte size of a fixed-size GGUF value type; `None` for strings and arrays.
fn fixed_size(vtype: u32) -> Option<u64> {
    match vtype {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4 | 5 | 6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    }

    fn parse_bytes(b: &[u8]) -> Result<GgufInfo, GgufError> {
        let mut r = Reader {
            inner: b,
            left: b.len() as u64,
        };
        parse(&mut r, b.len() as u64)
    }

    fn kv_str(b: &mut Vec<u8>, key: &str, val: &str) {
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key.as_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend((val.len() as u64).to_le_bytes());
        b.extend(val.as_bytes());
    }

    #[test]
    fn reads_string_metadata() {
        let mut b = header(0, 1);
        kv_str(&mut b, "general.architecture", "llama");
        let info = parse_bytes(&b).expect("valid");
        assert_eq!(info.architecture(), "llama");
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        assert!(matches!(parse_bytes(b"GGUX\x03\0\0\0"), Err(GgufError::BadMagic)));
        let mut b = header(0, 0);
        b[4] = 9;
        assert!(matches!(parse_bytes(&b), Err(GgufError::BadVersion(9))));
    }

    #[test]
    fn rejects_counts_larger_than_the_file() {
        let b = header(0, u64::MAX);
        let err = parse_bytes(&b).expect_err("must fail");
        assert!(err.to_string().contains("metadata count"), "{err}");
        let b = header(1 << 40, 0);
        assert!(parse_bytes(&b).is_err());
    }

    #[test]
    fn rejects_string_length_past_end() {
        let mut b = header(0, 1);
        b.extend(u64::MAX.to_le_bytes());
        let err = parse_bytes(&b).expect_err("must fail");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn truncated_file_is_an_error() {
        let mut b = header(0, 1);
        kv_str(&mut b, "general.architecture", "llama");
        b.truncate(b.len() - 2);
        assert!(parse_bytes(&b).is_err());
    }
}
