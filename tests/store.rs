//! The model store through the real binary: pull with resume from a loopback server, create
//! from a Modelfile, copy, remove, blob upload, Ollama's store, and names that try to escape.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::support::file_server::FileServer;
use crate::support::{self, Server, SMOL};

/// A fresh, empty models directory for one test.
fn fresh_store(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-it-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// `hearth` on the store `dir`, with no Ollama store in sight.
fn hearth_in(dir: &Path) -> Command {
    let mut c = support::hearth();
    c.env("HEARTH_MODELS", dir).env("OLLAMA_MODELS", dir.join("no-ollama"));
    c
}

fn run(mut c: Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("stdin");
    child.wait_with_output().expect("wait")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn list(dir: &Path) -> String {
    let mut c = hearth_in(dir);
    c.arg("list");
    let out = run(c, "");
    assert!(out.status.success(), "list: {}", text(&out).1);
    text(&out).0
}

fn smol_digest() -> String {
    // The same file the fetch script checks.
    "sha256:b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".to_string()
}

#[test]
fn an_interrupted_pull_is_invisible_and_resumes_to_the_right_digest() {
    let dir = fresh_store("pull");
    let model = support::model_path(SMOL);
    let total = std::fs::metadata(&model).expect("model").len();
    let server = FileServer::start(model);
    let url = server.url("x.gguf");

    // First attempt: the connection drops at 40%.
    server.cut_after.store(total * 2 / 5, Ordering::SeqCst);
    let mut c = hearth_in(&dir);
    c.args(["pull", &url, "--as", "pulled"]);
    let out = run(c, "");
    let (_, err) = text(&out);
    assert!(!out.status.success(), "a cut download must fail");
    assert!(err.contains("resume"), "the error says how to go on: {err}");
    assert!(!list(&dir).contains("pulled"), "a partial model never shows in list");

    // Second attempt resumes: far fewer bytes than the whole file.
    let before = server.sent.load(Ordering::SeqCst);
    let mut c = hearth_in(&dir);
    c.args(["pull", &url, "--as", "pulled", "--ram-budget", "64MiB"]);
    let out = run(c, "");
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "resumed pull failed: {err}");
    assert!(err.contains("warning") && err.contains("budget"), "warns that it won't fit 64 MiB: {err}");
    let resent = server.sent.load(Ordering::SeqCst) - before;
    assert!(resent <= total * 3 / 5 + 65536, "resume sent {resent} of {total} bytes");
    assert!(err.contains("pulling pulled:latest") && err.contains("success"), "progress is shown: {err}");
    assert!(stdout.contains(&smol_digest()), "digest reported: {stdout}");
    assert!(list(&dir).contains("pulled:latest"));
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifests/pulled/latest")).expect("manifest")).expect("json");
    assert_eq!(manifest["model"], json!(smol_digest()));
    assert_eq!(manifest["source"], json!(url));
    assert!(std::fs::read_dir(dir.join("partial")).expect("partial dir").next().is_none(), "no partial file left");

    // And the pulled model runs.
    let mut c = hearth_in(&dir);
    c.args(["run", "pulled", "Say hi.", "--num-predict", "8", "--temperature", "0"]);
    let out = run(c, "");
    assert!(out.status.success(), "run pulled: {}", text(&out).1);
    assert!(!text(&out).0.trim().is_empty());
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn a_server_without_range_support_restarts_the_pull_cleanly() {
    let dir = fresh_store("norange");
    let model = support::model_path(SMOL);
    let total = std::fs::metadata(&model).expect("model").len();
    let server = FileServer::start(model);
    server.ignore_range.store(true, Ordering::SeqCst);
    server.cut_after.store(total / 3, Ordering::SeqCst);
    let mut c = hearth_in(&dir);
    c.args(["pull", &server.url("m.gguf")]);
    assert!(!run(c, "").status.success());
    let mut c = hearth_in(&dir);
    c.args(["pull", &server.url("m.gguf")]);
    let out = run(c, "");
    assert!(out.status.success(), "{}", text(&out).1);
    // Named after the file; complete and correct despite the restart.
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifests/m/latest")).expect("manifest")).expect("json");
    assert_eq!(manifest["model"], json!(smol_digest()));
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn pulling_something_that_is_not_gguf_leaves_nothing_behind() {
    let dir = fresh_store("notgguf");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, vec![7u8; 100_000]).expect("write");
    let server = FileServer::start(junk.clone());
    let mut c = hearth_in(&dir);
    c.args(["pull", &server.url("junk.gguf"), "--as", "junk"]);
    let out = run(c, "");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("GGUF"), "says why: {}", text(&out).1);
    std::fs::remove_file(junk).expect("rm");
    assert!(!list(&dir).contains("junk"));
    assert!(!dir.join("blobs").exists() || std::fs::read_dir(dir.join("blobs")).expect("blobs").next().is_none());
    assert!(std::fs::read_dir(dir.join("partial")).expect("partial").next().is_none(), "the bad download is deleted");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

/// A config that lets `/api/pull` reach the loopback file server.
fn loopback_pulls(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.with_extension("yaml");
    std::fs::write(&config, "pull:\n  allow: [127.0.0.1]\n").expect("write config");
    config
}

#[test]
fn api_pull_streams_ollama_progress() {
    let dir = fresh_store("apipull");
    let files = FileServer::start(support::model_path(SMOL));
    let config = loopback_pulls(&dir);
    let s = Server::start_with(&["--models", dir.to_str().expect("utf8"), "--config", config.to_str().expect("utf8")]);
    let lines = s.ndjson("/api/pull", &json!({ "model": files.url("y.gguf"), "as": "viaapi" }));
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"));
    assert_eq!(statuses.last(), Some(&"success"), "{lines:?}");
    let progress = lines.iter().find(|l| l["completed"].is_u64()).expect("a progress line");
    assert!(progress["total"].as_u64().expect("total") > 90_000_000);
    let tags: Value = s.get("/api/tags").json().expect("tags");
    let names: Vec<&str> = tags["models"].as_array().expect("models").iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(names.contains(&"viaapi:latest"), "{names:?}");
    let r = s.post("/api/generate", &json!({"model": "viaapi", "prompt": "hi", "stream": false, "options": {"num_predict": 4}}));
    assert_eq!(r.status(), 200);
    // Errors in the stream's own shape; unknown catalog names are a 404 before any streaming.
    let r = s.post("/api/pull", &json!({ "model": "no-such-model:7b" }));
    assert_eq!(r.status(), 404);
    let r = s.post("/api/pull", &json!({ "model": "http://127.0.0.1:1/x.gguf", "as": "../x" }));
    assert_eq!(r.status(), 400);
    let lines = s.ndjson("/api/pull", &json!({ "model": "http://127.0.0.1:1/x.gguf" }));
    assert!(lines.last().expect("line")["error"].as_str().expect("error").contains("127.0.0.1:1"), "{lines:?}");
    drop(s);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

fn write_modelfile(dir: &Path, body: &str) -> PathBuf {
    let f = dir.join("Modelfile");
    std::fs::write(&f, body).expect("write Modelfile");
    f
}

#[test]
fn create_from_a_modelfile_answers_in_persona_deterministically() {
    let dir = fresh_store("create");
    let mf = write_modelfile(
        &dir,
        &format!(
            "FROM {}\nSYSTEM \"\"\"You are Captain Hook, a pirate. Always mention your ship.\"\"\"\nPARAMETER temperature 0\nPARAMETER num_predict 24\n",
            support::model_path(SMOL).display()
        ),
    );
    let mut c = hearth_in(&dir);
    c.args(["create", "mybot", "-f", mf.to_str().expect("utf8")]);
    let out = run(c, "");
    assert!(out.status.success(), "create: {}", text(&out).1);
    let ask = || {
        let mut c = hearth_in(&dir);
        c.args(["run", "mybot"]);
        let out = run(c, "Who are you?\n");
        assert!(out.status.success(), "run: {}", text(&out).1);
        text(&out).0
    };
    let (a, b) = (ask(), ask());
    assert_eq!(a, b, "PARAMETER temperature 0 makes it deterministic");
    // The Modelfile's SYSTEM and PARAMETERs apply by default: counted exactly, the prompt is
    // the one with that system message, and the answer stops at num_predict 24. (What a 135M
    // model says in persona differs between CPUs, so its words are not checked.)
    {
        let dir_s = dir.to_str().expect("utf8");
        let s = Server::start_with_env(&[], &[("HEARTH_MODELS", dir_s), ("OLLAMA_MODELS", &format!("{dir_s}/no-ollama"))]);
        let ask = |extra: Value| -> Value {
            let mut body = json!({"model": "mybot", "prompt": "Who are you?", "stream": false});
            body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
            let r = s.post("/api/generate", &body);
            assert_eq!(r.status(), 200);
            r.json().expect("json")
        };
        let by_default = ask(json!({}));
        let explicit = ask(json!({"system": "You are Captain Hook, a pirate. Always mention your ship."}));
        let other = ask(json!({"system": "Be brief."}));
        assert_eq!(by_default["prompt_eval_count"], explicit["prompt_eval_count"], "{by_default} {explicit}");
        assert_ne!(by_default["prompt_eval_count"], other["prompt_eval_count"]);
        assert!(by_default["eval_count"].as_u64().is_some_and(|n| n <= 24), "{by_default}");
    }

    // Copy shares the blob; removing one name keeps the other working; the last one prunes it.
    let mut c = hearth_in(&dir);
    c.args(["cp", "mybot", "bot2:v1"]);
    assert!(run(c, "").status.success());
    let mut c = hearth_in(&dir);
    c.args(["rm", "mybot"]);
    assert!(run(c, "").status.success());
    let listing = list(&dir);
    assert!(!listing.contains("mybot") && listing.contains("bot2:v1"), "{listing}");
    let mut c = hearth_in(&dir);
    c.args(["run", "bot2:v1"]);
    assert_eq!(text(&run(c, "Who are you?\n")).0, a, "the copy keeps the persona");
    let mut c = hearth_in(&dir);
    c.args(["rm", "bot2:v1"]);
    assert!(run(c, "").status.success());
    assert_eq!(std::fs::read_dir(dir.join("blobs")).expect("blobs").count(), 0, "unused blob pruned");

    // Bad Modelfiles are refused with the line.
    let mf = write_modelfile(&dir, "FROM smollm2:135m\nPARAMETER temprature 0\n");
    let mut c = hearth_in(&dir);
    c.args(["create", "bad", "-f", mf.to_str().expect("utf8")]);
    let out = run(c, "");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("line 2"), "{}", text(&out).1);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn blobs_create_copy_and_delete_over_http() {
    let dir = fresh_store("blobs");
    let s = Server::start_with(&["--models", dir.to_str().expect("utf8")]);
    let digest = smol_digest();
    let head = |d: &str| s.client.head(s.url(&format!("/api/blobs/{d}"))).send().expect("head").status().as_u16();
    assert_eq!(head(&digest), 404);
    let bytes = std::fs::read(support::model_path(SMOL)).expect("model");
    // A body that doesn't match its digest is refused and leaves nothing.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let r = s.client.post(s.url(&format!("/api/blobs/{wrong}"))).body(bytes[..1000].to_vec()).send().expect("post");
    assert_eq!(r.status(), 400);
    assert_eq!(head(&wrong), 404);
    let r = s.client.post(s.url(&format!("/api/blobs/{digest}"))).body(bytes).send().expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(head(&digest), 200);

    let r = s.post("/api/create", &json!({
        "model": "up", "files": {"model.gguf": digest}, "system": "You are a cat. Answer with meow.",
        "parameters": {"temperature": 0, "num_predict": 8}, "stream": false
    }));
    assert_eq!(r.status(), 200, "{:?}", r.text());
    let show: Value = s.post("/api/show", &json!({"model": "up"})).json().expect("show");
    assert!(show["system"].as_str().expect("system").contains("cat"));
    assert!(show["parameters"].as_str().expect("parameters").contains("temperature 0"));
    let first: Value = s.post("/api/chat", &json!({"model": "up", "messages": [{"role": "user", "content": "Hello"}], "stream": false})).json().expect("chat");
    let second: Value = s.post("/api/chat", &json!({"model": "up", "messages": [{"role": "user", "content": "Hello"}], "stream": false})).json().expect("chat");
    assert_eq!(first["message"]["content"], second["message"]["content"], "temperature 0 from the model's parameters");
    assert_eq!(first["eval_count"], json!(8), "num_predict from the model's parameters");
    // A format still applies to a model with parameters of its own.
    let v: Value = s.post("/api/generate", &json!({"model": "up", "prompt": "A cat as JSON.", "format": "json", "stream": false, "options": {"num_predict": 40}})).json().expect("generate");
    let text = v["response"].as_str().expect("response");
    assert!(serde_json::from_str::<Value>(text).is_ok_and(|j| j.is_object()), "format json on a model with parameters: {text:?}");

    // Create from a name, copy, delete.
    let r = s.post("/api/create", &json!({"model": "up2", "from": "up", "system": "You are a dog."}));
    assert_eq!(r.status(), 200);
    assert!(r.text().expect("body").contains("success"));
    let show: Value = s.post("/api/show", &json!({"model": "up2"})).json().expect("show");
    assert!(show["system"].as_str().expect("system").contains("dog"));
    assert!(show["parameters"].as_str().expect("parameters").contains("num_predict 8"), "inherits parameters");
    assert_eq!(s.post("/api/copy", &json!({"source": "up2", "destination": "up3"})).status(), 200);
    let del = |m: &str| s.client.delete(s.url("/api/delete")).json(&json!({"model": m})).send().expect("delete").status().as_u16();
    assert_eq!(del("up2"), 200);
    assert_eq!(del("up2"), 404);
    assert_eq!(s.post("/api/show", &json!({"model": "up3"})).status(), 200);

    // The network can't name server paths or malformed digests.
    let r = s.post("/api/create", &json!({"model": "evil", "from": "/etc/passwd"}));
    assert_eq!(r.status(), 400);
    let r = s.post("/api/create", &json!({"model": "evil", "from": "../../etc/passwd.gguf"}));
    assert_eq!(r.status(), 400);
    let r = s.post("/api/create", &json!({"model": "evil", "files": {"x.gguf": "sha256:../../x"}}));
    assert_eq!(r.status(), 400);
    for path in ["/api/blobs/sha256:../../x", "/api/blobs/sha256:..%2F..%2Fx", "/api/blobs/md5:abc", "/api/blobs/sha256-0000"] {
        let r = s.client.post(s.url(path)).body("x").send().expect("post");
        assert_eq!(r.status(), 400, "{path}");
        let msg: Value = r.json().expect("json error");
        assert!(msg["error"].as_str().expect("error").contains("invalid digest"), "{path}: {msg}");
    }
    for name in ["../../../etc/passwd", "a/b", "..", "x:y:z"] {
        let r = s.post("/api/show", &json!({"model": name}));
        assert_eq!(r.status(), 400, "{name}");
        let r = s.client.delete(s.url("/api/delete")).json(&json!({"model": name})).send().expect("delete");
        assert_eq!(r.status(), 400, "{name}");
    }
    assert!(s.alive());
    drop(s);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn cli_show_refuses_paths_that_escape() {
    let mut c = support::hearth();
    c.args(["show", "../../../etc/passwd"]);
    let out = run(c, "");
    assert!(!out.status.success());
    let err = text(&out).1;
    assert!(err.contains("GGUF") || err.contains("not found"), "clear error: {err}");
    let mut c = support::hearth();
    c.args(["rm", "../x"]);
    let out = run(c, "");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("invalid model name"), "{}", text(&out).1);
}

/// Lays out an Ollama store with one library model, `tiny:1b`, over the SmolLM2 file.
fn fake_ollama_store(root: &Path) {
    let blobs = root.join("blobs");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let model_hex = smol_digest().trim_start_matches("sha256:").to_string();
    let weights = blobs.join(format!("sha256-{model_hex}"));
    if std::fs::hard_link(support::model_path(SMOL), &weights).is_err() {
        std::fs::copy(support::model_path(SMOL), &weights).expect("copy model");
    }
    let layer = |media: &str, content: &str| -> Value {
        let hex = {
            use std::fmt::Write;
            let out = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
            let mut child = out;
            std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), content.as_bytes()).expect("write");
            let o = child.wait_with_output().expect("wait");
            let mut s = String::new();
            write!(s, "{}", String::from_utf8_lossy(&o.stdout).split_whitespace().next().expect("hash")).expect("fmt");
            s
        };
        std::fs::write(blobs.join(format!("sha256-{hex}")), content).expect("layer");
        json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": content.len()})
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": smol_digest(), "size": 98362432},
            layer("application/vnd.ollama.image.system", "You are a robot called Unit 7."),
            layer("application/vnd.ollama.image.params", "{\"temperature\": 0, \"num_predict\": 6}"),
        ]
    });
    let dir = root.join("manifests/registry.ollama.ai/library/tiny");
    std::fs::create_dir_all(&dir).expect("manifests");
    std::fs::write(dir.join("1b"), manifest.to_string()).expect("manifest");
    // A hostile manifest whose digest tries to leave the blobs directory is skipped.
    let evil = json!({"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../../etc/passwd", "size": 1}]});
    let dir = root.join("manifests/registry.ollama.ai/library/evil");
    std::fs::create_dir_all(&dir).expect("manifests");
    std::fs::write(dir.join("latest"), evil.to_string()).expect("manifest");
}

#[test]
fn ollama_models_are_listed_read_only_and_run_in_place() {
    let dir = fresh_store("ollama");
    let ollama = dir.join("ollama-models");
    fake_ollama_store(&ollama);
    let mut cmd = hearth_in(&dir);
    cmd.env("OLLAMA_MODELS", &ollama).arg("list");
    let listing = text(&run(cmd, "")).0;
    assert!(listing.contains("tiny:1b") && listing.contains("ollama"), "{listing}");
    assert!(!listing.contains("evil"), "{listing}");

    let mut c = hearth_in(&dir);
    c.env("OLLAMA_MODELS", &ollama).args(["run", "tiny:1b"]);
    let out = run(c, "Hello\n");
    assert!(out.status.success(), "{}", text(&out).1);
    let mut c = hearth_in(&dir);
    c.env("OLLAMA_MODELS", &ollama).args(["run", "tiny:1b"]);
    assert_eq!(text(&run(c, "Hello\n")).0, text(&out).0, "Ollama's params layer applies (temperature 0)");

    let mut c = hearth_in(&dir);
    c.env("OLLAMA_MODELS", &ollama).args(["rm", "tiny:1b"]);
    let out = run(c, "");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("Ollama"), "{}", text(&out).1);
    assert!(ollama.join("manifests/registry.ollama.ai/library/tiny/1b").is_file(), "Ollama's store is untouched");
    assert!(!dir.join("blobs").exists(), "nothing was copied into hearth's store");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn an_adapter_from_a_modelfile_changes_the_answer() {
    let dir = fresh_store("adapter");
    let python = std::env::var("HEARTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let lora = dir.join("lora.gguf");
    let status = Command::new(&python)
        .args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/make_lora.py")])
        .arg(support::model_path(SMOL))
        .arg(&lora)
        .status()
        .expect("run make_lora.py (HEARTH_TEST_PYTHON needs the gguf package)");
    assert!(status.success());
    let mf = write_modelfile(
        &dir,
        &format!("FROM {}\nADAPTER lora.gguf\nPARAMETER temperature 0\nPARAMETER num_predict 12\n", support::model_path(SMOL).display()),
    );
    let mut c = hearth_in(&dir);
    c.args(["create", "tuned", "-f", mf.to_str().expect("utf8")]);
    let out = run(c, "");
    assert!(out.status.success(), "create: {}", text(&out).1);
    let mut c = hearth_in(&dir);
    c.args(["run", "tuned"]);
    let tuned = run(c, "Who are you?\n");
    assert!(tuned.status.success(), "{}", text(&tuned).1);
    let mut c = support::hearth();
    c.args(["run", SMOL, "--temperature", "0", "--num-predict", "12"]);
    let base = run(c, "Who are you?\n");
    assert_ne!(text(&tuned).0, text(&base).0, "the adapter is applied");

    // A model file is not an adapter.
    let mf = write_modelfile(&dir, &format!("FROM {0}\nADAPTER {0}\n", support::model_path(SMOL).display()));
    let mut c = hearth_in(&dir);
    c.args(["create", "x", "-f", mf.to_str().expect("utf8")]);
    let out = run(c, "");
    assert!(!out.status.success());
    assert!(text(&out).1.contains("not a LoRA adapter"), "{}", text(&out).1);
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn official_ollama_python_client_manages_models() {
    let dir = fresh_store("pyclient");
    let files = FileServer::start(support::model_path(SMOL));
    let config = loopback_pulls(&dir);
    let s = Server::start_with(&["--models", dir.to_str().expect("utf8"), "--config", config.to_str().expect("utf8")]);
    let model = support::model_path(SMOL);
    support::run_python(
        "ollama_store_client.py",
        &[
            ("OLLAMA_HOST", &format!("http://{}", s.addr)),
            ("MODEL_PATH", model.to_str().expect("utf8")),
            ("PULL_URL", &files.url("pulled-by-python.gguf")),
        ],
    );
    drop(s);
    std::fs::remove_dir_all(dir).expect("cleanup");
}
