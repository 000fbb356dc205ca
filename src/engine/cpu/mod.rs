//! Which build of llama.cpp's CPU kernels runs on this machine, and loading it.
//!
//! The binary carries one kernel module per CPU level (`variants`, built by build.rs). At the
//! engine's first use, `load` picks the best module whose needs this CPU meets (Rust's feature
//! detection, which also checks that the OS saves the wider registers), writes it and a stand-in
//! for ggml's core library into anonymous memory files (`memfd_create`), and hands the module to
//! ggml's loader, which checks it against the CPU once more before registering it. Where the
//! system refuses to map memory files executable, the two files go to a private cache directory
//! instead (`~/.cache/hearth/cpu`, mode 0700, named by their SHA-256 and checked against it before
//! each use). Nothing is downloaded. A CPU below the lowest level gets an error that
//! says so, never an illegal instruction: nothing above the baseline runs before the choice.
//!
//! `HEARTH_CPU_VARIANT=<name>` forces a level (for measuring one against another, or for a CPU
//! whose best level misbehaves); one this CPU cannot run is refused like any other.

#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod kernel_tests;
pub(crate) mod openmp;
pub mod variants;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use variants::Variant;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/cpu_variants.rs"));
}

/// What `hearth --version`, `/api/version` and `/health` say about the CPU.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// The kernel build chosen (or forced); `None` when no variant fits this CPU.
    pub variant: Option<&'static str>,
    /// Set by `HEARTH_CPU_VARIANT`.
    pub forced: bool,
    /// The features the variants care about that this CPU (and its OS) has.
    pub features: Vec<&'static str>,
}

/// Whether this CPU and its OS have a feature, by the name the variants use.
fn has(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
            "avx" => std::arch::is_x86_feature_detected!("avx"),
            "f16c" => std::arch::is_x86_feature_detected!("f16c"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
            "avxvnni" => std::arch::is_x86_feature_detected!("avxvnni"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512cd" => std::arch::is_x86_feature_detected!("avx512cd"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vbmi" => std::arch::is_x86_feature_detected!("avx512vbmi"),
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match feature {
            "dotprod" => std::arch::is_aarch64_feature_detected!("dotprod"),
            "fp16" => std::arch::is_aarch64_feature_detected!("fp16"),
            "sve" => std::arch::is_aarch64_feature_detected!("sve"),
            "i8mm" => std::arch::is_aarch64_feature_detected!("i8mm"),
            "sve2" => std::arch::is_aarch64_feature_detected!("sve2"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = feature;
        false
    }
}

fn all_variants() -> &'static [Variant] {
    variants::for_arch(std::env::consts::ARCH)
}

/// The variant to load: `HEARTH_CPU_VARIANT` when set, else the best this CPU can run.
pub fn choose() -> Result<&'static Variant, String> {
    let all = all_variants();
    if let Ok(name) = std::env::var("HEARTH_CPU_VARIANT") {
        let names: Vec<&str> = all.iter().map(|v| v.name).collect();
        let variant = all.iter().find(|v| v.name == name).ok_or_else(|| {
            format!("HEARTH_CPU_VARIANT={name} is not one of this build's CPU variants ({})", names.join(", "))
        })?;
        // Checked here, with the OS's support for the wider registers, and not only by ggml's
        // loader, which reads CPUID alone.
        let lacking: Vec<&str> = variant.needs.iter().copied().filter(|f| !has(f)).collect();
        if !lacking.is_empty() {
            return Err(format!(
                "HEARTH_CPU_VARIANT={name}: this CPU (or its OS) lacks {}, which the {name} kernels need; \
                 unset it to let hearth choose",
                lacking.join(", ")
            ));
        }
        return Ok(variant);
    }
    variants::best(all, has).ok_or_else(|| {
        let lowest = all.first().map(|v| (v.name, v.needs.join(", "))).unwrap_or(("none", String::new()));
        format!(
            "this CPU is below the lowest CPU level hearth's engine is built for ({}, which needs {}); \
             it has: {}",
            lowest.0,
            lowest.1,
            display_features(&features())
        )
    })
}

fn display_features(features: &[&str]) -> String {
    if features.is_empty() {
        "none of the features hearth's variants use".to_string()
    } else {
        features.join(", ")
    }
}

/// The features any variant needs that this CPU has, in the order the variants name them.
pub fn features() -> Vec<&'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    for f in all_variants().iter().flat_map(|v| v.needs.iter().copied()) {
        if !seen.contains(&f) && has(f) {
            seen.push(f);
        }
    }
    seen
}

pub fn report() -> CpuReport {
    CpuReport {
        variant: choose().ok().map(|v| v.name),
        forced: std::env::var_os("HEARTH_CPU_VARIANT").is_some(),
        features: features(),
    }
}

/// One line for `hearth --version`.
pub fn describe() -> String {
    let r = report();
    let variant = match (r.variant, r.forced) {
        (Some(v), false) => v.to_string(),
        (Some(v), true) => format!("{v} (forced by HEARTH_CPU_VARIANT)"),
        (None, _) => "none fits this CPU".to_string(),
    };
    format!("cpu kernels: {variant}; cpu features: {}", display_features(&r.features))
}

/// An anonymous in-memory file holding `bytes`, and the path by which the loader can open it.
fn memory_file(name: &str, bytes: &[u8]) -> Result<(std::fs::File, String), String> {
    let cname = CString::new(name).map_err(|_| format!("{name:?} has a NUL"))?;
    // SAFETY: cname is a valid C string; memfd_create returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and nothing else owns it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes).map_err(|e| format!("writing {name} to memory: {e}"))?;
    Ok((file, format!("/proc/self/fd/{fd}")))
}

/// Loads the chosen kernels into ggml's registry; called once, before llama.cpp is initialised.
/// Returns the variant's name.
pub(super) fn load() -> Result<&'static str, String> {
    let variant = choose()?;
    let module = embedded::MODULES
        .iter()
        .find(|(name, _)| *name == variant.name)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| format!("CPU variant {} is not embedded in this binary", variant.name))?;
    let module_name = format!("libggml-cpu-{}.so", variant.name);

    // The stand-in for ggml's core must be loaded (and stay loaded) before the module: the
    // loader then answers the module's `NEEDED libggml-base.so.0` with it, and the module's ggml
    // symbols bind to the executable, which exports them. From memory where the system lets
    // memory files be mapped executable; else from the cache directory.
    let (stub_name, stub_bytes) = embedded::CORE_STUB;
    let mut open_files = Vec::new();
    let from_memory = memory_file(stub_name, stub_bytes).and_then(|(file, path)| {
        open_library(&path)?;
        open_files.push(file);
        Ok(())
    });
    let module_path = match from_memory {
        Ok(()) => {
            let (file, path) = memory_file(&module_name, module)?;
            open_files.push(file);
            path
        }
        Err(e) => {
            let dir = dirs::cache_dir().ok_or("no cache directory for the CPU kernels (set XDG_CACHE_HOME)")?;
            let dir = dir.join("hearth").join("cpu");
            tracing::debug!("CPU kernels from memory failed ({e}); using {}", dir.display());
            open_library(&cached_file(&dir, stub_name, stub_bytes)?)?;
            cached_file(&dir, &module_name, module)?
        }
    };
    let c_module = CString::new(module_path).map_err(|e| e.to_string())?;
    // SAFETY: a valid path to a module built from the same llama.cpp source as the core linked
    // into this binary; ggml_backend_load returns null when the module fails to load or scores 0
    // (the CPU lacks what it was built for), and then nothing from it has run.
    let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(c_module.as_ptr()) };
    drop(open_files);
    if reg.is_null() {
        let hint = if std::env::var_os("HEARTH_CPU_VARIANT").is_some() {
            "unset HEARTH_CPU_VARIANT to let hearth choose"
        } else {
            "run with RUST_LOG=llama-cpp-2=info for the loader's reason, or set HEARTH_CPU_VARIANT to a lower level"
        };
        return Err(format!(
            "llama.cpp refused the {} CPU kernels on this CPU (features seen: {}); {hint}",
            variant.name,
            display_features(&features())
        ));
    }
    Ok(variant.name)
}

/// dlopen for good: the handle is never closed, the library stays for the life of the process.
fn open_library(path: &str) -> Result<(), String> {
    let c_path = CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the only library opened this way is the stub, which has no code
    // and no constructors.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(format!("loading {path}: {}", dl_error()));
    }
    Ok(())
}

/// `bytes` as a file in `dir` (created private to this user), named by their SHA-256 so that
/// two hearth builds never share one, and rewritten unless its content checks out.
fn cached_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<String, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let sum = Sha256::digest(bytes);
    let digest = format!("{sum:x}");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Code is loaded from here: nobody else may be able to write in it.
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid || meta.mode() & 0o022 != 0 {
        return Err(format!("{} is not private to this user (owner and mode 0700 expected)", dir.display()));
    }
    let path = dir.join(format!("{}-{name}", &digest[..16]));
    let intact = std::fs::read(&path).map(|found| Sha256::digest(&found) == sum).unwrap_or(false);
    if !intact {
        let partial = dir.join(format!("{}-{name}.{}.partial", &digest[..16], std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut f| f.write_all(bytes).map(|()| f))
            .map_err(|e| format!("writing {}: {e}", partial.display()))?;
        file.flush().map_err(|e| e.to_string())?;
        std::fs::rename(&partial, &path).map_err(|e| format!("placing {}: {e}", path.display()))?;
    }
    path.to_str().map(str::to_string).ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a C string valid until the next dl* call on this thread.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, read before any other dl* call.
        unsafe { std::ffi::CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::variants::{best, for_arch};

    #[test]
    fn the_best_variant_is_the_one_needing_most_of_what_the_cpu_has() {
        let x86 = for_arch("x86_64");
        let pick = |have: &[&str]| best(x86, |f| have.contains(&f)).map(|v| v.name);
        assert_eq!(pick(&[]), None, "no SSE4.2: below the lowest");
        assert_eq!(pick(&["sse4.2"]), Some("sse42"));
        assert_eq!(pick(&["sse4.2", "avx"]), Some("sandybridge"));
        let haswell = ["sse4.2", "avx", "f16c", "fma", "avx2", "bmi2"];
        assert_eq!(pick(&haswell), Some("haswell"));
        assert_eq!(pick(&["sse4.2", "avx", "f16c"]), Some("ivybridge"));
        assert_eq!(pick(&["sse4.2", "avx", "f16c", "fma"]), Some("piledriver"));
        // AVX2 without BMI2 (some VIA and early AMD parts) stays below AVX2.
        assert_eq!(pick(&["sse4.2", "avx", "f16c", "fma", "avx2"]), Some("piledriver"));
        assert_eq!(pick(&["sse4.2", "avx", "fma"]), Some("sandybridge"));
        let alder: Vec<&str> = haswell.iter().copied().chain(["avxvnni"]).collect();
        assert_eq!(pick(&alder), Some("alderlake"));
        let skx: Vec<&str> =
            haswell.iter().copied().chain(["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]).collect();
        assert_eq!(pick(&skx), Some("skylakex"));
        let spr: Vec<&str> = skx.iter().copied().chain(["avx512vbmi", "avx512vnni", "avxvnni"]).collect();
        assert_eq!(pick(&spr), Some("icelake"));
    }

    #[test]
    fn every_arch_lists_its_variants_lowest_first_and_only_known_ones() {
        for arch in ["x86_64", "aarch64"] {
            let list = for_arch(arch);
            assert!(!list.is_empty(), "{arch}");
            for pair in list.windows(2) {
                // Each level needs everything its predecessor needs, except the AVX-VNNI branch.
                assert!(pair[0].needs.len() <= pair[1].needs.len(), "{arch}: {} then {}", pair[0].name, pair[1].name);
            }
        }
        assert!(for_arch("riscv64").is_empty());
    }

    #[test]
    fn a_cached_kernel_file_is_rewritten_unless_its_content_checks_out() {
        let dir = std::env::temp_dir().join(format!("hearth-cpu-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = super::cached_file(&dir, "libx.so", b"kernels").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"kernels");
        std::fs::write(&path, b"tampered").expect("tamper");
        assert_eq!(super::cached_file(&dir, "libx.so", b"kernels").expect("rewrite"), path);
        assert_eq!(std::fs::read(&path).expect("read"), b"kernels");
        // Other content gets another name: two builds never share a file.
        assert_ne!(super::cached_file(&dir, "libx.so", b"other").expect("write"), path);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn this_build_embeds_every_variant_of_its_arch() {
        let embedded: Vec<&str> = super::embedded::MODULES.iter().map(|(n, _)| *n).collect();
        let listed: Vec<&str> = super::all_variants().iter().map(|v| v.name).collect();
        assert_eq!(embedded, listed);
        assert!(super::embedded::MODULES.iter().all(|(_, bytes)| bytes.starts_with(b"\x7fELF")));
    }
}
