//! Converting a model's low-bit weights to Q8_0 at load (`--convert-weights q8_0`).
//!
//! Why: llama.cpp multiplies a batch of tokens by a weight matrix with a GEMM kernel only for
//! some weight types on a given CPU (on x86: Q8_0, Q4_0, Q5_0, IQ4_NL, F16 through tinyBLAS,
//! more with AVX2 repacking). Other types (Q4_1 and the K-quants on a CPU without AVX2) go
//! through a per-row dot product, so prefill and multi-stream decode cost about as much per
//! token as single-stream decode. Q8_0 has the GEMM everywhere. Measured on SmolLM2 Q4_1 on a
//! 2-core AVX (no AVX2) machine, against llama.cpp on the file: prefill 1.71x, 8 clients 1.35x,
//! but one-stream decode 0.87x (more bytes per token); weights take 1.49x the RAM (README,
//! "Converted weights"; `benches/compare.sh`, `benches/serve.sh`).
//!
//! What: every 2-D tensor stored with fewer than 8 bits per weight becomes Q8_0; tensors in
//! Q8_0, F16, BF16 or F32 are copied as they are. Q8_0 holds a 4- or 5-bit block's values to
//! within 1/254 of the block's range, so answers stay close to the file's (on SmolLM2 Q4_1
//! over 4k tokens of license text, against an f16 evaluation of the same weights: mean KL
//! divergence 0.0046 vs 0.0032 for the file's own kernels; same top token 95.7% vs 96.5%).
//!
//! How: llama.cpp's own quantizer writes the converted GGUF into an anonymous in-memory file
//! (memfd), which the model is then loaded from and mapped. Nothing is written to disk, so a
//! killed process leaves nothing behind; the memory is the model's mapping and is freed with it.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use crate::store::gguf::{GgufInfo, TensorInfo};

/// How a model's weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weights {
    /// As the file stores them.
    #[default]
    #[serde(rename = "none")]
    AsStored,
    /// Low-bit tensors converted to Q8_0 (see the module docs).
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Weights {
    pub fn as_str(self) -> &'static str {
        match self {
            Weights::AsStored => "none",
            Weights::Q8_0 => "q8_0",
        }
    }

    pub fn parse(s: &str) -> Result<Weights, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Weights::AsStored),
            "q8_0" => Ok(Weights::Q8_0),
            other => Err(format!("unknown weight conversion {other:?}: use none or q8_0")),
        }
    }
}

mod ty {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q8_0: u32 = 8;
    pub const Q8_1: u32 = 9;
    pub const Q8_K: u32 = 15;
    pub const I8: u32 = 24;
    pub const F64: u32 = 28;
    pub const BF16: u32 = 30;
}

/// Whether `t` has 8 or more bits per weight (or is not a weight type at all): such tensors are
/// kept as stored.
fn keeps_precision(t: u32) -> bool {
    matches!(t, ty::F32 | ty::F16 | ty::Q8_0 | ty::Q8_1 | ty::Q8_K | ty::BF16) || (ty::I8..=ty::F64).contains(&t)
}

/// Whether the Q8_0 conversion rewrites this tensor: a matrix of a known low-bit type whose rows
/// split into Q8_0 blocks of 32.
fn converts(t: &TensorInfo) -> bool {
    let matrix = t.dims.len() >= 2 && t.dims[1..].iter().any(|&d| d > 1);
    matrix && !keeps_precision(t.ggml_type) && t.dims[0].is_multiple_of(32)
}

/// Bytes of one tensor's data after conversion.
fn converted_size(t: &TensorInfo) -> u64 {
    if converts(t) {
        t.dims.iter().product::<u64>() / 32 * 34
    } else {
        t.nbytes
    }
}

/// Bytes of tensor data the model holds in memory with `weights`. The CPU kernels' repacked
/// layouts are the size of the rows they hold.
pub fn weight_bytes(info: &GgufInfo, weights: Weights) -> u64 {
    match weights {
        Weights::AsStored => info.tensor_bytes(),
        Weights::Q8_0 => info.tensors.iter().map(converted_size).fold(0, u64::saturating_add),
    }
}

/// Whether converting changes anything in this model.
pub fn worth_converting(info: &GgufInfo, weights: Weights) -> bool {
    weights == Weights::Q8_0 && info.tensors.iter().any(converts)
}

/// An in-memory GGUF holding the converted model; load it from `path()` while this lives.
pub struct Converted {
    file: File,
}

impl Converted {
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// An ECMAScript regex matching exactly `name` (llama.cpp's tensor overrides are `std::regex`).
fn exact_pattern(name: &str) -> String {
    let mut p = String::with_capacity(name.len() + 8);
    p.push('^');
    for c in name.chars() {
        if ".^$|()[]{}*+?\\/".contains(c) {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('$');
    p
}

#[cfg(not(target_os = "linux"))]
pub fn convert(_path: &Path, _info: &GgufInfo, _threads: i32) -> Result<Converted, String> {
    Err("--convert-weights needs Linux (an in-memory file, memfd)".to_string())
}

/// Converts the model at `path` (described by `info`) into an in-memory GGUF with llama.cpp's
/// quantizer on `threads` threads. The caller has checked `worth_converting`.
#[cfg(target_os = "linux")]
pub fn convert(path: &Path, info: &GgufInfo, threads: i32) -> Result<Converted, String> {
    let name = CString::new("hearth-weights").expect("no NUL in a literal");
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("cannot make an in-memory file: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor this File now owns (it closes it).
    let converted = Converted { file: unsafe { File::from_raw_fd(fd) } };

    // The tensors kept as stored are pinned to their own type by exact-name overrides; every
    // other weight gets the default, Q8_0 ("pure": no per-layer type mixing).
    let kept: Vec<(CString, u32)> = info
        .tensors
        .iter()
        .filter(|t| !converts(t))
        .map(|t| Ok((CString::new(exact_pattern(&t.name)).map_err(|_| format!("tensor name {:?} has a NUL", t.name))?, t.ggml_type)))
        .collect::<Result<_, String>>()?;
    let mut overrides: Vec<llama_cpp_sys_2::llama_model_tensor_override> = kept
        .iter()
        .map(|(pattern, t)| llama_cpp_sys_2::llama_model_tensor_override { pattern: pattern.as_ptr(), type_: *t })
        .collect();
    overrides.push(llama_cpp_sys_2::llama_model_tensor_override { pattern: std::ptr::null(), type_: 0 });

    // SAFETY: returns a plain struct of defaults.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    params.nthread = threads.max(1);
    params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0;
    params.output_tensor_type = llama_cpp_sys_2::GGML_TYPE_COUNT;
    params.token_embedding_type = llama_cpp_sys_2::GGML_TYPE_COUNT;
    params.allow_requantize = true;
    params.quantize_output_tensor = true;
    params.pure_ = true;
    params.tt_overrides = overrides.as_ptr();

    let input = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| "the model path has a NUL".to_string())?;
    let output = CString::new(converted.path().as_os_str().as_encoded_bytes()).expect("no NUL in a /proc path");
    // SAFETY: both paths are NUL-terminated; params and the override array (terminated by a
    // null pattern, its strings owned by `kept`) outlive the call, which does not keep them.
    let status = unsafe { llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params) };
    if status != 0 {
        return Err("llama.cpp could not convert the weights to q8_0 (see the log)".to_string());
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::gguf::ggml_type_size;

    fn tensor(name: &str, dims: Vec<u64>, ggml_type: u32) -> TensorInfo {
        let (block, size) = ggml_type_size(ggml_type).expect("a known type");
        let nbytes = dims.iter().product::<u64>() / block * size;
        TensorInfo { name: name.into(), dims, ggml_type, offset: 0, nbytes }
    }

    #[test]
    fn low_bit_matrices_convert_and_the_rest_is_kept() {
        assert!(converts(&tensor("blk.0.ffn_up.weight", vec![576, 1536], 3))); // Q4_1
        assert!(converts(&tensor("blk.0.ffn_up.weight", vec![640, 2048], 12))); // Q4_K
        assert!(!converts(&tensor("token_embd.weight", vec![576, 49152], ty::Q8_0)));
        assert!(!converts(&tensor("output.weight", vec![576, 49152], ty::F16)));
        assert!(!converts(&tensor("blk.0.attn_norm.weight", vec![576], ty::F32)));
        assert!(!converts(&tensor("odd.weight", vec![48, 64], 3)), "rows not in blocks of 32 stay");
        assert!(!converts(&tensor("vec.weight", vec![576, 1], 3)), "a vector is not a matrix");
    }

    #[test]
    fn converted_bytes_count_q8_0_blocks() {
        let info = GgufInfo {
            version: 3,
            metadata: Default::default(),
            tensors: vec![
                tensor("a.weight", vec![64, 32], 3),       // Q4_1: 20 bytes per 32
                tensor("b.weight", vec![64, 32], ty::F16), // kept: 2 bytes each
                tensor("n.weight", vec![64], ty::F32),     // kept
            ],
            file_size: 0,
            data_start: 0,
        };
        assert_eq!(weight_bytes(&info, Weights::AsStored), 64 * 32 / 32 * 20 + 64 * 32 * 2 + 64 * 4);
        assert_eq!(weight_bytes(&info, Weights::Q8_0), 64 * 32 / 32 * 34 + 64 * 32 * 2 + 64 * 4);
        assert!(worth_converting(&info, Weights::Q8_0));
        assert!(!worth_converting(&info, Weights::AsStored));
    }

    #[test]
    fn names_parse_both_ways() {
        for w in [Weights::AsStored, Weights::Q8_0] {
            assert_eq!(Weights::parse(w.as_str()), Ok(w));
        }
        assert_eq!(Weights::parse("Q8_0"), Ok(Weights::Q8_0));
        assert!(Weights::parse("q4_0").expect_err("q4_0 is not a conversion").contains("none or q8_0"));
    }

    #[test]
    fn patterns_match_only_the_name() {
        assert_eq!(exact_pattern("blk.0.attn_q.weight"), r"^blk\.0\.attn_q\.weight$");
    }
}
