//! Malformed GGUF files against the real binary: `tests/malformed/make_corpus.py` writes one
//! file per known bad shape (CVE and issue PoC shapes, a truncated and a corrupted real model),
//! and hearth must refuse each one with a message, never crash, hang or abort, both from
//! `hearth run FILE` and from a server whose models directory holds them next to a good model.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{hearth, model_path, Server, SMOL};

/// The one shape that passes the Rust validator on purpose: llama.cpp itself must refuse it.
const REACHES_LLAMA_CPP: &str = "missing-weights.gguf";
/// A well-formed LoRA adapter: `/api/show` may describe it, but it never loads as a model.
const ADAPTER: &str = "adapter-not-model.gguf";

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hearth-gguf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the malformed corpus into `dir`; returns (file name, text its error must contain).
fn make_corpus(dir: &Path) -> Vec<(String, String)> {
    let python = std::env::var("HEARTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/malformed/make_corpus.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(dir)
        .arg("--model")
        .arg(model_path(SMOL))
        .output()
        .expect("run python (set HEARTH_TEST_PYTHON to a python with the `gguf` package)");
    assert!(
        out.status.success(),
        "make_corpus.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect("expected.json"))
            .expect("json");
    let mut shapes: Vec<(String, String)> = expected
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    shapes.sort();
    assert!(shapes.len() >= 30, "only {} shapes", shapes.len());
    shapes
}

/// Runs `hearth run FILE` with "hi" on stdin; kills it (by PID, through its handle) and fails
/// the test if it runs past `limit`. Returns (exit status, stderr).
fn run_file(file: &Path, work: &Path, limit: Duration) -> (std::process::ExitStatus, String) {
    let stdin_path = work.join("stdin.txt");
    let stderr_path = work.join("stderr.txt");
    std::fs::write(&stdin_path, "hi\n").expect("write stdin");
    let mut child = hearth()
        .arg("run")
        .arg(file)
        .stdin(File::open(&stdin_path).expect("stdin"))
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).expect("stderr"))
        .spawn()
        .expect("spawn hearth run");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hearth run {} still running after {limit:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&stderr_path).unwrap_or_default())
}

#[test]
fn hearth_run_refuses_every_malformed_gguf() {
    let dir = TempDir::new("run");
    let shapes = make_corpus(&dir.0);
    let mut failures = Vec::new();
    for (file, expect) in &shapes {
        let (status, stderr) = run_file(&dir.0.join(file), &dir.0, Duration::from_secs(60));
        let last = stderr.lines().last().unwrap_or("").to_string();
        if status.code().is_none() {
            failures.push(format!("{file}: killed by a signal ({status}); stderr ends {last:?}"));
        } else if status.success() {
            failures.push(format!("{file}: was accepted"));
        } else if !stderr.contains(expect.as_str()) || stderr.trim().is_empty() {
            failures.push(format!("{file}: error should mention {expect:?}: {last:?}"));
        } else if file != REACHES_LLAMA_CPP
            && !["invalid GGUF", "not a GGUF", "unsupported GGUF version"]
                .iter()
                .any(|t| stderr.contains(t))
        {
            failures.push(format!("{file}: not refused by the validator: {last:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shapes failed:\n{}",
        failures.len(),
        shapes.len(),
        failures.join("\n")
    );
}

/// Hard-links `from` to `to`, copying when a link is not possible (another filesystem).
fn link_or_copy(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).expect("copy model");
    }
}

#[test]
fn the_server_refuses_malformed_models_and_keeps_serving() {
    let corpus = TempDir::new("corpus");
    let shapes = make_corpus(&corpus.0);
    let models = TempDir::new("models");
    for (file, _) in &shapes {
        link_or_copy(&corpus.0.join(file), &models.0.join(format!("bad-{file}")));
    }
    link_or_copy(&model_path(SMOL), &models.0.join("good.gguf"));
    let s = Server::start_with(&["--models", models.0.to_str().expect("utf-8 temp path")]);

    let mut failures = Vec::new();
    for (file, expect) in &shapes {
        let name = format!("bad-{}", file.trim_end_matches(".gguf"));
        let r = s.post(
            "/api/generate",
            &json!({"model": name, "prompt": "hi", "stream": false}),
        );
        let status = r.status();
        let body: Value = r.json().unwrap_or(Value::Null);
        let error = body["error"].as_str().unwrap_or("").to_string();
        if file == REACHES_LLAMA_CPP {
            // llama.cpp refuses it (a missing tensor): 422 with llama.cpp's reason, no crash.
            if status != 422 || error.is_empty() {
                failures.push(format!("{name}: generate answered {status} {body}, wanted 422"));
            }
            continue;
        }
        if !status.is_client_error() || !error.contains(expect.as_str()) {
            failures.push(format!(
                "{name}: generate answered {status} {body}, wanted 4xx mentioning {expect:?}"
            ));
        }
        let r = s.post("/api/show", &json!({"model": name}));
        if file != ADAPTER && !r.status().is_client_error() {
            failures.push(format!("{name}: show answered {}", r.status()));
        }
        if !s.alive() {
            failures.push(format!("{name}: the server died"));
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} shapes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    assert!(s.alive(), "the server stopped answering /api/version");
    let r = s.post(
        "/api/generate",
        &json!({"model": "good", "prompt": "hi", "stream": false, "options": {"num_predict": 4}}),
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().expect("json");
    assert_eq!(v["done"], true, "{v}");
    let tags: Value = s.get("/api/tags").json().expect("json");
    let names: Vec<&str> = tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("good")), "{names:?}");
}
