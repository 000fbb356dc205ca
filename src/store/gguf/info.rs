//! What a valid GGUF file yields: its metadata values, tensor directory and the facts hearth
//! reads from them (architecture, context, vocabulary, quantization), and ggml's type sizes.

use super::*;

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
    /// Bytes of the tensor's data, from its shape and type (the reader rejects unknown types).
    pub nbytes: u64,
}

/// What hearth knows about a GGUF file before loading it.
#[derive(Debug, Clone)]
pub struct GgufInfo {
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    pub file_size: u64,
    /// Where the tensor data section starts in the file (tensor offsets count from here).
    pub data_start: u64,
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

    /// Bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.nbytes).fold(0, u64::saturating_add)
    }

    /// Each tensor's bytes in the file, as [start, end) offsets from the file's start, in file
    /// order.
    pub fn tensor_spans(&self) -> Vec<(u64, u64)> {
        let mut spans: Vec<(u64, u64)> = self
            .tensors
            .iter()
            .map(|t| {
                let start = self.data_start.saturating_add(t.offset);
                (start, start.saturating_add(t.nbytes))
            })
            .collect();
        spans.sort_unstable();
        spans
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

pub(super) fn ftype_name(ftype: Option<u64>) -> &'static str {
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
