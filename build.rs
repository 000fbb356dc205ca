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
//! (`TWO_BY_TWO`, `REPACKED`, `SAME_PATH_EDITS`, `src/engine/cpu/kernels/`): each patch finds the exact text it
//! replaces, and the build stops if a llama.cpp update moved it.
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
    // Which llama.cpp this is (llama-cpp-sys-2's package folder names its version) and which of
    // hearth's kernels are in it (the repacked ones give other floats than llama.cpp's): saved
    // KV states are only restored by the build that wrote them (engine::disk_prefixes).
    let version = original.parent().and_then(Path::file_name).map_or_else(|| original.display().to_string(), |n| n.to_string_lossy().into_owned());
    let build = format!("{version}+kernels-{:016x}", kernels_digest());
    println!("cargo:rustc-env=HEARTH_LLAMA_CPP={build}");
    let mut config = cmake::Config::new(&source);
    config
        .profile("Release")
        // A new folder when a setting changes: CMake keeps a configured folder's settings.
        .out_dir(out.join("cpu-modules"))
        .define("BUILD_SHARED_LIBS", "ON")
        .define("GGML_BACKEND_DL", "ON")
        .define("GGML_CPU_ALL_VARIANTS", "ON")
        .define("GGML_NATIVE", "OFF")
        .define("GGML_OPENMP", "ON")
        // Weight repacking, for hearth's own kernels only (`REPACKED`). llamafile's kernels
        // take another path for two columns or more than for one, but leaving them out cost
        // Gemma 3 a quarter of its prefill speed.
        .define("GGML_CPU_REPACK", "ON")
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

/// hearth's two-by-two kernels, each written into llama.cpp's x86 CPU code for CPUs with AVX:
/// (llama.cpp's one-row function, the file in src/engine/cpu/kernels that defines
/// `hearth_<function without ggml_>_2x2`, the number of blocks in a row in that function's
/// terms). llama.cpp has no batched kernel for these types on x86 (ARM has one with i8mm), so
/// a batch of tokens went through them one row by one column at a time. Q4_K and Q6_K got the
/// same treatment and were measured without a gain worth their code (Gemma 3 at 4 clients,
/// 1.03x against 1.02x): llama.cpp's tiled kernels take them from 8 columns up.
const TWO_BY_TWO: &[(&str, &str, &str)] = &[
    ("ggml_vec_dot_q4_1_q8_1", "q4_1_2x2.c", "n / QK8_1"),
];

/// hearth's repacked kernels (`repacked_4x8.cpp`): Q8_0 weights in llama.cpp's four-row layout
/// and Q5_0 weights in hearth's (`repacked_4x8.h`, the same size as the rows it holds), for x86
/// CPUs with AVX2 (with VNNI where there is one). The kernels are appended to x86's repack.cpp,
/// replacing llama.cpp's generic code for the Q8_0 layout there (`arch-fallback.h` names the
/// generic code as the x86 one), and they are the only repacking hearth does: llama.cpp's own
/// choices are left out (`REPACK_EDITS`). On the Sapphire Rapids machine they were slower
/// (llama-bench --repack 0 against 1: SmolLM2 decode +10%, Gemma 3 prefill +10% without them),
/// and their kernels take another path for more than three columns than for fewer (gemm against
/// gemv), one more way a token's logits would depend on the batch it was decoded in (README
/// "Speculative decoding"). hearth's kernels give every column the same operations in either path.
const REPACKED: &str = "repacked_4x8.cpp";

/// The edits to repack.cpp, each (the exact text, what goes in its place, how many times it
/// occurs): the Q5_0 layout's repacking and kernels, named for llama.cpp's templates; and the
/// choice of layout, which on x86 with AVX2 is hearth's for Q8_0 and Q5_0, and otherwise none
/// (llama.cpp's choices after it are never reached).
const REPACK_EDITS: &[(&str, &str, usize)] = &[
    (
        "class tensor_traits_base : public ggml::cpu::tensor_traits {\n",
        "// hearth (build.rs REPACKED): Q5_0 weights four rows at a time.\n\
#if defined(__AVX2__)\n\
template <> int repack<block_q5_0, 8, 4>(struct ggml_tensor * t, const void * data, size_t data_size) {\n\
    return hearth_repack_q5_0_4x8(t, data, data_size);\n\
}\n\
template <> void gemv<block_q5_0, 8, 4, GGML_TYPE_Q8_0>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {\n\
    hearth_gemv_q5_0_4x8_q8_0(n, s, bs, vx, vy, nr, nc);\n\
}\n\
template <> void gemm<block_q5_0, 8, 4, GGML_TYPE_Q8_0>(int n, float * s, size_t bs, const void * vx, const void * vy, int nr, int nc) {\n\
    hearth_gemm_q5_0_4x8_q8_0(n, s, bs, vx, vy, nr, nc);\n\
}\n\
#endif\n\n{0}",
        1,
    ),
    (
        "    if (cur->type == GGML_TYPE_Q4_0) {\n        if (ggml_cpu_has_avx2() ||",
        "    // hearth (build.rs REPACKED): only its own kernels repack, on x86 CPUs with AVX2.\n\
#if defined(__AVX2__)\n\
    static const ggml::cpu::repack::tensor_traits<block_q5_0, 8, 4, GGML_TYPE_Q8_0> q5_0_4x8_q8_0;\n\
    if (cur->type == GGML_TYPE_Q8_0 && cur->ne[1] % 4 == 0) {\n\
        return &q8_0_4x8_q8_0;\n\
    }\n\
    if (cur->type == GGML_TYPE_Q5_0 && cur->ne[1] % 4 == 0) {\n\
        return &q5_0_4x8_q8_0;\n\
    }\n\
#endif\n\
    return nullptr;\n\n{0}",
        1,
    ),
];

/// Edits that give a token the same arithmetic alone as in a batch (README "Speculative
/// decoding"), each (file, the exact text, what goes in its place, with `{0}` for the text and
/// `{kernel}` for the attention kernel's code):
/// - hearth's attention kernel for batches of fewer than 64 query rows (`attention_rows.cpp`):
///   llama.cpp's flash attention hands it what it can take before choosing a path of its own,
///   and the work buffer makes room for it;
/// - llama.cpp's tiled K-quant kernels take batches from 64 tokens, as flash attention's tiled
///   path does, instead of from 8 (fewer go through the dot products one token goes through);
/// - llamafile's matrix kernels take one column as they take two or more, on x86 (ggml's dot
///   products took it before; llama.cpp's comment says "only enable sgemm for prompt processing").
const ATTENTION: &str = "attention_rows.cpp";
const SAME_PATH_EDITS: &[(&str, &str, &str)] = &[
    ("ops.cpp", "static void ggml_compute_forward_flash_attn_ext_f16(\n", "{kernel}\n{0}"),
    (
        "ops.cpp",
        "    const bool use_split_kv_path = ",
        "    // hearth (build.rs SAME_PATH_EDITS): fewer than 64 query rows go through hearth's kernel.\n\
    if (!use_ref && hearth_flash_attn_rows(params, dst)) {\n\
        return;\n\
    }\n\n{0}",
    ),
    (
        "ops.h",
        "void ggml_compute_forward_fwht(const struct ggml_compute_params * params, struct ggml_tensor * dst);\n",
        "{0}size_t hearth_flash_attn_rows_work(const struct ggml_tensor * node, int n_tasks); // hearth (build.rs SAME_PATH_EDITS)\n",
    ),
    (
        "tiled/tiled.cpp",
        "    return rows >= 8 || ggml_tiled_matmul_forced();\n",
        "    return rows >= 64 || ggml_tiled_matmul_forced(); // hearth (build.rs SAME_PATH_EDITS): 64, as flash attention's tiles\n",
    ),
    (
        "llamafile/sgemm.cpp",
        "    // only enable sgemm for prompt processing\n#if !defined(__MMA__)\n",
        "    // hearth (build.rs SAME_PATH_EDITS): one column goes through the same kernels as more on x86.\n#if !defined(__MMA__) && !defined(__x86_64__)\n",
    ),
    (
        "ggml-cpu.c",
        "                        cur += MAX(prefill, decode);\n",
        "                        cur += MAX(MAX(prefill, decode), hearth_flash_attn_rows_work(node, n_tasks)); // hearth (build.rs SAME_PATH_EDITS)\n",
    ),
];

/// One file of llama.cpp's CPU backend with `SAME_PATH_EDITS` made.
fn patch_same_path_file(rel: &str, text: String, kernels: &Path) -> String {
    SAME_PATH_EDITS.iter().filter(|(file, _, _)| *file == rel).fold(text, |text, (_, find, with)| {
        let with = if with.contains("{kernel}") { with.replace("{kernel}", &read_kernel(kernels, ATTENTION)) } else { with.to_string() };
        let with = with.replace("{0}", find);
        replace_exactly(&text, find, &with, 1, rel)
    })
}

/// `text` with each of the `count` occurrences of `find` replaced; the build stops if there are
/// not exactly that many, which means llama.cpp changed and the patch needs a look.
fn replace_exactly(text: &str, find: &str, replace: &str, count: usize, file: &str) -> String {
    let found = text.matches(find).count();
    assert_eq!(found, count, "a kernel patch looks for {find:?} in {file} {count} times and found it {found} times: llama.cpp changed, update TWO_BY_TWO, REPACKED or SAME_PATH_EDITS in build.rs");
    text.replace(find, replace)
}

fn replace_once(text: &str, find: &str, replace: &str, file: &str) -> String {
    replace_exactly(text, find, replace, 1, file)
}

fn read_kernel(kernels: &Path, file: &str) -> String {
    let path = kernels.join(file);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One file of llama.cpp's CPU backend with the repacked kernels written in (`REPACKED`).
fn patch_repack_file(rel: &str, text: String, kernels: &Path) -> String {
    match rel {
        "arch/x86/repack.cpp" => format!("{text}\n{}", read_kernel(kernels, REPACKED)),
        "arch-fallback.h" => {
            // Only x86's section: the other architectures keep the generic code.
            let start = text.find("#elif defined(__x86_64__)").expect("arch-fallback.h has an x86 section: update REPACKED in build.rs");
            let end = start + 1 + text[start + 1..].find("#elif").expect("arch-fallback.h's x86 section ends");
            let mut section = text[start..end].to_string();
            for f in ["gemv", "gemm"] {
                section = replace_once(&section, &format!("#define ggml_{f}_q8_0_4x8_q8_0_generic ggml_{f}_q8_0_4x8_q8_0\n"), "", rel);
            }
            format!("{}{section}{}", &text[..start], &text[end..])
        }
        "repack.h" => format!("{text}\n{}", read_kernel(kernels, "repacked_4x8.h")),
        "repack.cpp" => REPACK_EDITS.iter().fold(text, |text, (find, with, count)| {
            let with = with.replace("{0}", find);
            replace_exactly(&text, find, &with, *count, rel)
        }),
        _ => text,
    }
}

/// One file of llama.cpp's CPU backend with the two-by-two kernels written in: in x86's
/// quants.c, each kernel goes before its one-row function, which hands it the two-by-two calls;
/// in ggml-cpu.c, each type's entry asks for two-by-two calls (`nrows`) as it does on ARM.
/// Only the SSE4.2 variant keeps one-by-one calls.
fn patch_cpu_file(rel: &str, mut text: String, kernels: &Path) -> String {
    for (function, file, blocks) in TWO_BY_TWO {
        let kernel = format!("hearth_{}_2x2", function.trim_start_matches("ggml_"));
        if rel == "arch/x86/quants.c" {
            let head = format!("void {function}(int n, float * GGML_RESTRICT s, size_t bs, const void * GGML_RESTRICT vx, size_t bx, const void * GGML_RESTRICT vy, size_t by, int nrc) {{\n");
            let code = read_kernel(kernels, file);
            assert!(code.contains(&format!("static void {kernel}(")), "{file} defines no {kernel}");
            let with = format!(
                "#if defined(__AVX__)\n{code}#endif\n\n{head}#if defined(__AVX__)\n    if (nrc == 2) {{\n        {kernel}({blocks}, s, bs, vx, bx, vy, by);\n        return;\n    }}\n#endif\n"
            );
            text = replace_once(&text, &head, &with, rel);
        } else if rel == "ggml-cpu.c" {
            let entry = format!("        .vec_dot                  = {function},\n");
            let at = text.find(&entry).unwrap_or_else(|| panic!("ggml-cpu.c has no entry for {function}: update TWO_BY_TWO in build.rs"));
            let arm = "#if defined (__ARM_FEATURE_MATMUL_INT8)\n";
            // The type's own entry: the condition comes before the entry closes.
            let rest = &text[at..];
            let cond = rest.find(arm).filter(|&i| !rest[..i].contains('}'));
            let cond = cond.unwrap_or_else(|| panic!("ggml-cpu.c's entry for {function} has no {arm:?}: update TWO_BY_TWO in build.rs"));
            text.replace_range(at + cond..at + cond + arm.len(), "#if defined (__ARM_FEATURE_MATMUL_INT8) || defined(__AVX__)\n");
        }
    }
    text
}

/// A copy of the llama.cpp source at `copy` with the two-by-two kernels written in. A file is
/// written only when its content changed, so CMake rebuilds only what a patch or an update
/// touched.
fn patched_source(source: &Path, copy: &Path) -> PathBuf {
    let kernels = Path::new("src/engine/cpu/kernels");
    println!("cargo:rerun-if-changed={}", kernels.display());
    let cpu = Path::new("ggml/src/ggml-cpu");
    let patch = |rel: &Path, bytes: Vec<u8>| -> Vec<u8> {
        match rel.strip_prefix(cpu).ok().and_then(Path::to_str) {
            Some(name @ ("arch/x86/quants.c" | "ggml-cpu.c")) => {
                let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
                patch_same_path_file(name, patch_cpu_file(name, text, kernels), kernels).into_bytes()
            }
            Some(name @ ("ops.cpp" | "ops.h" | "llamafile/sgemm.cpp" | "tiled/tiled.cpp")) => {
                let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
                patch_same_path_file(name, text, kernels).into_bytes()
            }
            Some(name @ ("arch/x86/repack.cpp" | "arch-fallback.h" | "repack.h" | "repack.cpp")) => {
                let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
                patch_repack_file(name, text, kernels).into_bytes()
            }
            _ => bytes,
        }
    };
    mirror(source, copy, Path::new(""), &patch);
    copy.to_path_buf()
}

/// A digest of hearth's kernel sources and of this script's patches.
fn kernels_digest() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut files: Vec<_> = fs::read_dir("src/engine/cpu/kernels").expect("listing the kernels").map(|e| e.expect("listing the kernels").path()).collect();
    files.push(PathBuf::from("build.rs"));
    files.sort();
    for f in files {
        fs::read(&f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display())).hash(&mut hasher);
    }
    hasher.finish()
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
