//! The CPU variants hearth ships: llama.cpp's CPU kernels built once per instruction-set level,
//! and the CPU features each one needs. `build.rs` includes this file (by path) to know which
//! variants to build; `engine::cpu` uses it at start to pick the best one the CPU can run.
//!
//! Plain data with no dependencies, so that the build script can compile it too. The names are
//! llama.cpp's (`GGML_CPU_ALL_VARIANTS` in ggml/src/CMakeLists.txt); the features are the
//! compiler flags each level turns on there, spelled as Rust's feature detection spells them.

/// One build of llama.cpp's CPU kernels.
pub struct Variant {
    /// llama.cpp's name for it: the module is `libggml-cpu-<name>.so`.
    pub name: &'static str,
    /// What the CPU must have to run it (Rust's names for `is_*_feature_detected!`).
    pub needs: &'static [&'static str],
}

const AVX2_LEVEL: &[&str] = &["sse4.2", "avx", "f16c", "fma", "avx2", "bmi2"];
const AVX512_LEVEL: &[&str] =
    &["sse4.2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"];

/// x86-64, lowest first. There is no variant below SSE4.2 (CPUs from before 2008 to 2011:
/// Core 2, AMD K10): hearth refuses to start its engine there with a message rather than die on
/// an illegal instruction. AMX (Sapphire Rapids) is left out: on an Intel Xeon in a Firecracker VM
/// whose CPUID and XCR0 both report AMX, ggml's AMX matmul died with SIGILL at its first
/// `tilezero`, and the AVX-512 VNNI kernels serve those CPUs.
const X86_64: &[Variant] = &[
    Variant { name: "sse42", needs: &["sse4.2"] },
    Variant { name: "sandybridge", needs: &["sse4.2", "avx"] },
    // F16C converts half floats (the KV cache's) in hardware: without it, attention over a long
    // history runs through a table lookup per value, about 6x slower on a 20-token follow-up at
    // depth 1,500 tokens (SmolLM2; README, "Portable build").
    Variant { name: "ivybridge", needs: &["sse4.2", "avx", "f16c"] },
    Variant { name: "piledriver", needs: &["sse4.2", "avx", "f16c", "fma"] },
    Variant { name: "haswell", needs: AVX2_LEVEL },
    Variant { name: "alderlake", needs: &["sse4.2", "avx", "f16c", "fma", "avx2", "bmi2", "avxvnni"] },
    Variant { name: "skylakex", needs: AVX512_LEVEL },
    Variant {
        name: "icelake",
        needs: &[
            "sse4.2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw",
            "avx512vbmi", "avx512vnni",
        ],
    },
];

/// aarch64 (Linux), lowest first: the ARMv8.0 to ARMv8.6 levels llama.cpp builds. The ARMv9.2
/// (SME) levels are left out until Rust's runtime detection of SME is stable.
const AARCH64: &[Variant] = &[
    Variant { name: "armv8.0_1", needs: &[] },
    Variant { name: "armv8.2_1", needs: &["dotprod"] },
    Variant { name: "armv8.2_2", needs: &["dotprod", "fp16"] },
    Variant { name: "armv8.2_3", needs: &["dotprod", "fp16", "sve"] },
    Variant { name: "armv8.6_1", needs: &["dotprod", "fp16", "sve", "i8mm"] },
    Variant { name: "armv8.6_2", needs: &["dotprod", "fp16", "sve", "i8mm", "sve2"] },
];

/// The variants for a target architecture (`std::env::consts::ARCH` or Cargo's
/// `CARGO_CFG_TARGET_ARCH`), lowest first; empty where hearth has none.
pub fn for_arch(arch: &str) -> &'static [Variant] {
    match arch {
        "x86_64" => X86_64,
        "aarch64" => AARCH64,
        _ => &[],
    }
}

/// The best variant whose needs `has` grants: the one that needs the most. `None` when the CPU is
/// below the lowest.
pub fn best(variants: &[Variant], has: impl Fn(&str) -> bool) -> Option<&Variant> {
    variants.iter().filter(|v| v.needs.iter().all(|f| has(f))).max_by_key(|v| v.needs.len())
}
