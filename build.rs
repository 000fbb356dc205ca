//! Records the version and git hash for `hearth --version` and `/api/version`, and builds
//! llama.cpp's CPU kernels once per CPU variant (`src/engine/cpu/variants.rs`) so that one hearth
//! binary runs on every x86-64 CPU from SSE4.2 up with the best kernels for each.
//!
//! How the pieces fit: llama-cpp-sys-2 builds llama.cpp and ggml's core as static libraries with
//! no CPU backend in them (`GGML_CPU=OFF`, set in .cargo/config.toml). Here the same llama.cpp
//! source is configured again with ggml's loadable backends (`GGML_BACKEND_DL`,
//! `GGML_CPU_ALL_VARIANTS`) and only the CPU variant modules are built. Those modules call into
//! ggml's core, which lives in the hearth executable: the link exports the core's symbols
//! (`--dynamic-list`), and a tiny stand-in `libggml-base.so.0` (no code, only the name) satisfies
//! the modules' dependency on the core's shared library. The modules and the stand-in are
//! embedded in the binary (`include_bytes!` in the generated `cpu_variants.rs`); `engine::cpu`
//! loads the chosen one from memory at start.
//!
//! The modules are built from a copy of that source with hearth's own kernels written in
//! (`KERNEL_PATCHES`, `src/engine/cpu/kernels/`): each patch names the exact text it replaces,
//! and the build stops if a llama.cpp update moved it.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

// The build script needs only the table (`for_arch`), not the runtime's choice.
#[allow(dead_code)]
#[path = "src/engine/cpu/variants.rs"]
mod variants;

fn main() {
    record_version();
    build_cpu_variants();
}

fn record_version() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HEARTH_GIT_HASH={hash}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

/// The SONAME the variant modules ask for: ggml-base's shared library, major version 0.
const CORE_SONAME: &str = "libggml-base.so.0";

fn build_cpu_variants() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/engine/cpu/variants.rs");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let os = env::var("CARGO_CFG_TARGET_OS").expect("cargo sets CARGO_CFG_TARGET_OS");
    let list = variants::for_arch(&arch);
    if os != "linux" || list.is_empty() {
        panic!("hearth builds its CPU variants for Linux on x86-64 and aarch64; this target is {arch}-{os}");
    }

    println!("cargo:rerun-if-env-changed=GGML_CPU");
    if env::var("GGML_CPU").as_deref() != Ok("OFF") {
        panic!(
            "GGML_CPU=OFF must reach llama-cpp-sys-2's build (it is set in .cargo/config.toml, which cargo \
             reads from the current directory: build from the hearth checkout, e.g. `cargo install --path .`)"
        );
    }
    let original = llama_source();
    let source = patched_source(&original, &out.join("llama.cpp"));
    // Which llama.cpp this is (llama-cpp-sys-2's package folder names its version): saved KV
    // states are only restored by the build that wrote them (engine::disk_prefixes).
    let build = original.parent().and_then(Path::file_name).map_or_else(|| original.display().to_string(), |n| n.to_string_lossy().into_owned());
    println!("cargo:rustc-env=HEARTH_LLAMA_CPP={build}");
    let mut config = cmake::Config::new(&source);
    config
        .profile("Release")
        .out_dir(out.join("cpu-kernels"))
        .define("BUILD_SHARED_LIBS", "ON")
        .define("GGML_BACKEND_DL", "ON")
        .define("GGML_CPU_ALL_VARIANTS", "ON")
        .define("GGML_NATIVE", "OFF")
        .define("GGML_OPENMP", "ON")
        // No weight repacking. On the Sapphire Rapids machine it was slower (llama-bench
        // --repack 0 against 1: SmolLM2 decode +10%, Gemma 3 prefill +10% without it), and its
        // kernels take another path for more than three rows than for fewer (gemm against
        // gemv), one more way a token's logits depend on the batch it was decoded in (README
        // "Speculative decoding"). llamafile's kernels do the same for two rows or more, but
        // leaving them out cost Gemma 3 a quarter of its prefill speed.
        .define("GGML_CPU_REPACK", "OFF")
        // Only the kernels: no llama, no tools, nothing that would need more than a compiler.
        .define("LLAMA_BUILD_COMMON", "OFF")
        .define("LLAMA_BUILD_TESTS", "OFF")
        .define("LLAMA_BUILD_EXAMPLES", "OFF")
        .define("LLAMA_BUILD_TOOLS", "OFF")
        .define("LLAMA_BUILD_SERVER", "OFF")
        .define("LLAMA_BUILD_APP", "OFF")
        .define("LLAMA_CURL", "OFF")
        .define("LLAMA_OPENSSL", "OFF")
        // The symbol table is not needed: the loader finds the two entry points in the
        // dynamic one, which stripping keeps.
        .define("CMAKE_MODULE_LINKER_FLAGS", "-s")
        .always_configure(false);
    let mut modules = Vec::new();
    for v in list {
        let target = format!("ggml-cpu-{}", v.name);
        let dir = config.build_target(&target).build();
        let module = dir.join("build").join("bin").join(format!("lib{target}.so"));
        assert!(module.is_file(), "the build of {target} left no {}", module.display());
        modules.push((v.name, module));
    }

    let stub = out.join(CORE_SONAME);
    build_core_stub(&stub);
    write_dynamic_list(&out);
    write_embedding(&out, &stub, &modules);
}

/// The llama.cpp source that llama-cpp-sys-2 built, read from that build's CMake cache: the two
/// builds must come from the same source, or the modules would not fit the core.
fn llama_source() -> PathBuf {
    let cmake_dir = env::var("DEP_LLAMA_GGML_CMAKE_DIR")
        .expect("llama-cpp-sys-2 reports where its ggml build is (DEP_LLAMA_GGML_CMAKE_DIR)");
    // <out>/lib/cmake (or lib64/cmake) -> <out>/build/CMakeCache.txt
    let sys_out = Path::new(&cmake_dir).ancestors().nth(2).expect("a cmake dir inside llama-cpp-sys-2's OUT_DIR");
    let cache = sys_out.join("build").join("CMakeCache.txt");
    let text = fs::read_to_string(&cache).unwrap_or_else(|e| panic!("reading {}: {e}", cache.display()));
    let source = text
        .lines()
        .find_map(|l| l.strip_prefix("CMAKE_HOME_DIRECTORY:INTERNAL="))
        .unwrap_or_else(|| panic!("{} names no source directory", cache.display()));
    println!("cargo:rerun-if-changed={}", cache.display());
    PathBuf::from(source)
}

/// hearth's kernels, written into llama.cpp's CPU backend: (file under ggml/src/ggml-cpu, the
/// exact text to find, which must occur once, what replaces it). `{kernel:NAME}` in a
/// replacement stands for the file NAME in src/engine/cpu/kernels.
const KERNEL_PATCHES: &[(&str, &str, &str)] = &[
    // Q4_1 by Q8_1, two rows by two columns, where the CPU has AVX2: the kernel goes in before
    // the one-row function, which hands it the two-by-two calls...
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_q4_1_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {\n    const int qk = QK8_1;\n    const int nb = n / qk;\n\n    assert(n % qk == 0);\n    assert(nrc == 1);\n",
        "#if defined(__AVX2__)\n{kernel:q4_1_2x2.c}#endif\n\nvoid ggml_vec_dot_q4_1_q8_1(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {\n    const int qk = QK8_1;\n    const int nb = n / qk;\n\n    assert(n % qk == 0);\n#if defined(__AVX2__)\n    if (nrc == 2) {\n        hearth_vec_dot_q4_1_q8_1_2x2(nb, s, bs, vx, bx, vy, by);\n        return;\n    }\n#endif\n    assert(nrc == 1);\n",
    ),
    // ...and ggml asks for two-by-two calls (its `nrows`), as it already does on ARM with i8mm.
    (
        "ggml-cpu.c",
        "        .vec_dot                  = ggml_vec_dot_q4_1_q8_1,\n        .vec_dot_type             = GGML_TYPE_Q8_1,\n#if defined (__ARM_FEATURE_MATMUL_INT8)\n",
        "        .vec_dot                  = ggml_vec_dot_q4_1_q8_1,\n        .vec_dot_type             = GGML_TYPE_Q8_1,\n#if defined (__ARM_FEATURE_MATMUL_INT8) || defined(__AVX2__)\n",
    ),
];

/// A copy of the llama.cpp source at `copy` with `KERNEL_PATCHES` applied. A file is written
/// only when its content changed, so CMake rebuilds only what a patch or an update touched.
fn patched_source(source: &Path, copy: &Path) -> PathBuf {
    let kernels = Path::new("src/engine/cpu/kernels");
    println!("cargo:rerun-if-changed={}", kernels.display());
    let cpu = Path::new("ggml/src/ggml-cpu");
    let patch = |rel: &Path, bytes: Vec<u8>| -> Vec<u8> {
        let mut text = None;
        for (file, find, replace) in KERNEL_PATCHES.iter().filter(|p| cpu.join(p.0) == rel) {
            let t = text.get_or_insert_with(|| String::from_utf8(bytes.clone()).expect("llama.cpp's sources are UTF-8"));
            assert_eq!(t.matches(find).count(), 1, "the text a kernel patch replaces in {file} is not there exactly once: llama.cpp changed, update KERNEL_PATCHES");
            let mut replace = replace.to_string();
            while let Some(start) = replace.find("{kernel:") {
                let end = start + replace[start..].find('}').expect("a closed {kernel:NAME}");
                let path = kernels.join(&replace[start + 8..end]);
                let code = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                replace.replace_range(start..=end, &code);
            }
            *t = t.replacen(find, &replace, 1);
        }
        text.map_or(bytes, String::into_bytes)
    };
    mirror(source, copy, Path::new(""), &patch);
    copy.to_path_buf()
}

/// Copies the tree `from` to `to` (`rel` is the path inside both), passing each file through
/// `patch`, and writes a file only when the copy differs.
fn mirror(from: &Path, to: &Path, rel: &Path, patch: &dyn Fn(&Path, Vec<u8>) -> Vec<u8>) {
    let (src, dst) = (from.join(rel), to.join(rel));
    let meta = fs::metadata(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    if meta.is_dir() {
        fs::create_dir_all(&dst).unwrap_or_else(|e| panic!("creating {}: {e}", dst.display()));
        let entries = fs::read_dir(&src).unwrap_or_else(|e| panic!("listing {}: {e}", src.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("listing {}: {e}", src.display()));
            mirror(from, to, &rel.join(entry.file_name()), patch);
        }
    } else {
        let bytes = patch(rel, fs::read(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display())));
        if fs::read(&dst).ok().as_deref() != Some(&bytes[..]) {
            fs::write(&dst, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", dst.display()));
        }
    }
}

/// A shared library with no code whose SONAME is ggml-base's: loaded first, it answers the
/// modules' `NEEDED libggml-base.so.0`, and every ggml symbol they use binds to the executable.
fn build_core_stub(stub: &Path) {
    let out = stub.parent().expect("the stub lives in OUT_DIR");
    let source = out.join("core-stub.c");
    fs::write(&source, "/* ggml's core is in the hearth executable; this file only carries its name. */\n")
        .expect("writing the stub's source");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-nostdlib", "-s"])
        .arg(format!("-Wl,-soname,{CORE_SONAME}"))
        .arg("-o")
        .arg(stub)
        .arg(&source)
        .status()
        .expect("running the C compiler for the core stub");
    assert!(status.success(), "building the core stub failed");
}

/// Export ggml's core from the executable, so that the modules, loaded later, bind to it.
fn write_dynamic_list(out: &Path) {
    let list = out.join("ggml-core.dynlist");
    fs::write(&list, "{\n  ggml_*;\n  gguf_*;\n  quantize_*;\n  dequantize_*;\n  iq2xs_*;\n  iq3xs_*;\n};\n")
        .expect("writing the dynamic list");
    println!("cargo:rustc-link-arg=-Wl,--dynamic-list={}", list.display());
}

fn write_embedding(out: &Path, stub: &Path, modules: &[(&str, PathBuf)]) {
    let mut code = String::from("// Generated by build.rs: the CPU variant modules and the core stub.\n");
    code.push_str(&format!("pub static CORE_STUB: (&str, &[u8]) = ({CORE_SONAME:?}, include_bytes!({:?}));\n", stub));
    code.push_str("pub static MODULES: &[(&str, &[u8])] = &[\n");
    for (name, path) in modules {
        code.push_str(&format!("    ({name:?}, include_bytes!({path:?})),\n"));
    }
    code.push_str("];\n");
    fs::write(out.join("cpu_variants.rs"), code).expect("writing cpu_variants.rs");
}
