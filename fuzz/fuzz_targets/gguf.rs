//! libFuzzer target for the GGUF validator: any byte string must give `Ok` or a `GgufError`,
//! never a panic, an abort, a huge allocation or a hang. It includes the validator's source
//! file directly, so the fuzz build never compiles hearth or llama.cpp.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/store/gguf/mod.rs"]
mod gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = gguf::parse_gguf_bytes(data) {
        // Exercise what callers do with an accepted file.
        let _ = info.check_kind(gguf::GgufKind::Model);
        let _ = info.check_kind(gguf::GgufKind::Adapter);
        let _ = info.tensor_bytes();
        let _ = info.parameter_size();
        let _ = info.quantization_level();
        let _ = info.vocab_size();
        let _ = info.arch_u64("context_length");
        for v in info.metadata.values() {
            let _ = v.to_json();
        }
    }
});
