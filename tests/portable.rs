//! One binary for every x86-64 CPU: the same `hearth` file, run natively and under
//! `qemu-x86_64` as older CPU models, picks a different build of llama.cpp's CPU kernels each
//! time and answers the same greedy text; below the lowest level it refuses with a message and an
//! exit status, never an illegal instruction. qemu comes from Debian's `qemu-user`
//! (scripts/test.sh installs it).

#![cfg(target_arch = "x86_64")]

use std::process::{Command, Output};

use crate::support::{hearth, output_with_stdin, SMOL};

fn qemu() -> String {
    let qemu = std::env::var("HEARTH_TEST_QEMU").unwrap_or_else(|_| "qemu-x86_64".to_string());
    let found = std::process::Command::new(&qemu).arg("--version").output().map(|o| o.status.success());
    assert!(matches!(found, Ok(true)), "{qemu} is not runnable: install Debian's qemu-user (scripts/test.sh does)");
    qemu
}

/// A `hearth` command, natively (`cpu` None) or under qemu as that CPU model, with the variant
/// left to the binary's own choice.
fn hearth_as(cpu: Option<&str>) -> Command {
    let native = hearth();
    let mut cmd = match cpu {
        None => native,
        Some(model) => {
            let mut c = Command::new(qemu());
            c.args(["-cpu", model, native.get_program().to_str().expect("a UTF-8 path")]);
            for (k, v) in native.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            c
        }
    };
    cmd.env_remove("HEARTH_CPU_VARIANT");
    cmd
}

fn run_as(cpu: Option<&str>, args: &[&str]) -> Output {
    hearth_as(cpu).args(args).output().expect("spawn hearth")
}

/// The kernel build `hearth --version` names on that CPU.
fn variant(cpu: Option<&str>) -> String {
    let out = run_as(cpu, &["--version"]);
    assert!(out.status.success(), "{cpu:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find_map(|l| l.strip_prefix("cpu kernels: ")).unwrap_or_else(|| panic!("{cpu:?}: {text}"));
    line.split(';').next().expect("split yields one part").to_string()
}

/// A short greedy continuation through `hearth stdio` (a raw prompt: few tokens, since qemu
/// emulates AVX slowly).
fn greedy_answer(cpu: Option<&str>) -> String {
    let out = stdio_answer(hearth_as(cpu));
    assert!(out.status.success(), "{cpu:?}: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let answer: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{cpu:?}: {e}: {line}"));
    assert_eq!(answer["eval_count"], 4, "{cpu:?}: {answer}");
    answer["response"].as_str().expect("a response").to_string()
}

/// One greedy raw request through `hearth stdio`, on one thread.
fn stdio_answer(mut hearth: Command) -> Output {
    let request = r#"{"model":"smollm2:135m","prompt":"The capital of France is","raw":true,"stream":false,"options":{"num_predict":4,"temperature":0,"num_ctx":128}}"#;
    hearth.args(["stdio", SMOL, "--threads", "1"]);
    output_with_stdin(hearth, &format!("{request}\n"))
}

#[test]
fn one_file_picks_its_kernels_per_cpu_and_answers_alike() {
    // qemu 7.2 emulates x86 up to AVX2; the native CPU is whatever runs the tests.
    let picks = [
        ("Haswell", "haswell"),
        ("Opteron_G5", "piledriver"),
        ("IvyBridge", "ivybridge"),
        ("SandyBridge", "sandybridge"),
        ("Nehalem", "sse42"),
    ];
    for (cpu, expected) in picks {
        assert_eq!(variant(Some(cpu)), expected, "{cpu}");
    }
    // Answers without AVX2 and without AVX, and natively. (qemu runs AVX2 code too slowly to
    // answer here; the Haswell kernels answer natively in `every_variant_this_cpu_runs_answers_alike`.)
    let native_variant = variant(None);
    let native_answer = greedy_answer(None);
    assert!(!native_answer.trim().is_empty(), "the native run answered nothing");
    for cpu in ["SandyBridge", "Nehalem"] {
        assert_eq!(greedy_answer(Some(cpu)), native_answer, "{cpu} against native ({native_variant})");
    }
}

#[test]
fn a_cpu_below_the_lowest_level_is_refused_with_a_message() {
    // Core 2: SSSE3, no SSE4.2.
    let version = run_as(Some("core2duo"), &["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains("cpu kernels: none fits this CPU"));

    let out = run_as(Some("core2duo"), &["run", SMOL, "hi", "--num-predict", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An exit code, not a signal: no illegal instruction was reached.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("below the lowest CPU level") && stderr.contains("sse42"), "{stderr}");
}

#[test]
fn a_forced_variant_the_cpu_cannot_run_is_refused() {
    // Nehalem has no AVX: the Haswell kernels must not be loaded there even when asked for.
    let out = hearth_as(Some("Nehalem"))
        .args(["run", SMOL, "hi", "--num-predict", "4"])
        .env("HEARTH_CPU_VARIANT", "haswell")
        .output()
        .expect("spawn hearth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HEARTH_CPU_VARIANT=haswell: this CPU (or its OS) lacks avx, f16c, fma, avx2, bmi2"), "{stderr}");

    let unknown = hearth().args(["run", SMOL, "hi"]).env("HEARTH_CPU_VARIANT", "pentium").output().expect("spawn");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HEARTH_CPU_VARIANT=pentium is not one of") && stderr.contains("sse42"), "{stderr}");
}

/// The variants this build carries, as hearth lists them when asked for one it lacks.
fn all_variants() -> Vec<String> {
    let out = hearth().args(["run", SMOL, "hi"]).env("HEARTH_CPU_VARIANT", "none").output().expect("spawn hearth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let list = stderr.split("CPU variants (").nth(1).and_then(|s| s.split(')').next()).unwrap_or_else(|| panic!("{stderr}"));
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn every_variant_this_cpu_runs_answers_alike() {
    let native = greedy_answer(None);
    let variants = all_variants();
    assert_eq!(variants.first().map(String::as_str), Some("sse42"), "{variants:?}");
    let mut answered = Vec::new();
    for v in &variants {
        let mut forced = hearth_as(None);
        forced.env("HEARTH_CPU_VARIANT", v);
        let out = stdio_answer(forced);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
            assert_eq!(answer["response"].as_str(), Some(native.as_str()), "{v}");
            answered.push(v.clone());
        } else {
            // A level above this CPU: refused before any of its code ran.
            assert_eq!(out.status.code(), Some(1), "{v}: {stderr}");
            assert!(stderr.contains(&format!("HEARTH_CPU_VARIANT={v}: this CPU (or its OS) lacks")), "{v}: {stderr}");
        }
    }
    // Every x86-64 CPU that runs these tests has SSE4.2, and the lowest levels are answered.
    assert!(answered.iter().any(|v| v == "sse42"), "{answered:?}");
}
