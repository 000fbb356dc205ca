//! Integration tests: the real `hearth` binary, over HTTP, the command line and stdio, on the
//! real test models. One test binary (with `support`) keeps link time down.

mod agents;
mod bench;
mod convert;
mod cpu_quota;
mod database;
mod embed;
mod openai;
mod portable;
mod prefix;
mod routing;
mod security;
mod service;
mod speculative;
mod store;
mod gguf_validation;
mod disk_prefixes;
mod fleet;
mod kv_pool;
mod memory;
mod hostile;
mod scheduling;
mod support;
mod ui;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;
use std::time::Instant;

use serde_json::{json, Value};
use support::{hearth, run_with_stdin, Server, GEMMA, SMOL};

fn text_of(lines: &[Value], kind: &str) -> String {
    lines
        .iter()
        .map(|l| match kind {
            "chat" => l["message"]["content"].as_str().unwrap_or("").to_string(),
            _ => l["response"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

fn generate_once(s: &Server, body: Value) -> Value {
    let resp = s.post("/api/generate", &body);
    assert_eq!(resp.status(), 200);
    resp.json().expect("json")
}

// ---------------------------------------------------------------- HTTP

#[test]
fn root_and_version_answer() {
    let s = Server::start();
    assert_eq!(s.get("/").text().expect("body"), "Ollama is running");
    let v: Value = s.get("/api/version").json().expect("json");
    assert!(v["version"].as_str().is_some_and(|v| !v.is_empty()), "{v}");
}

#[test]
fn generate_streams_ndjson_ending_in_done_with_counts() {
    let s = Server::start();
    let resp = s.post(
        "/api/generate",
        &json!({"model": SMOL, "prompt": "Why is the sky blue?", "options": {"temperature": 0, "num_predict": 24}}),
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = resp
        .text()
        .expect("body")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(lines.len() > 2, "expected several chunks, got {lines:?}");
    let (last, chunks) = lines.split_last().expect("non-empty");
    for c in chunks {
        assert_eq!(c["done"], false);
        assert_eq!(c["model"], SMOL);
        assert!(c["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(last["done"], true);
    assert!(matches!(last["done_reason"].as_str(), Some("stop" | "length")));
    for k in ["eval_count", "eval_duration", "prompt_eval_count", "prompt_eval_duration", "total_duration"] {
        assert!(last[k].as_u64().is_some_and(|n| n > 0), "{k} should be > 0 in {last}");
    }
    assert!(last["context"].as_array().is_some_and(|c| !c.is_empty()));
    assert!(!text_of(chunks, "generate").trim().is_empty());
}

#[test]
fn chat_without_streaming_returns_one_message() {
    let s = Server::start();
    let v: Value = s
        .post(
            "/api/chat",
            &json!({"model": SMOL, "stream": false, "options": {"temperature": 0, "num_predict": 16},
                    "messages": [{"role": "system", "content": "You are terse."},
                                 {"role": "user", "content": "Name a primary colour."}]}),
        )
        .json()
        .expect("json");
    assert_eq!(v["done"], true);
    assert_eq!(v["message"]["role"], "assistant");
    assert!(v["message"]["content"].as_str().is_some_and(|c| !c.trim().is_empty()), "{v}");
    assert!(v["eval_count"].as_u64().is_some_and(|n| n > 0));
}

#[test]
fn greedy_and_seeded_sampling_are_repeatable() {
    let s = Server::start();
    for options in [json!({"temperature": 0, "num_predict": 24}), json!({"temperature": 0.9, "seed": 1234, "num_predict": 24})] {
        let body = json!({"model": SMOL, "prompt": "Tell me about cats.", "stream": false, "options": options});
        let a = generate_once(&s, body.clone())["response"].as_str().expect("text").to_string();
        let b = generate_once(&s, body)["response"].as_str().expect("text").to_string();
        assert!(!a.is_empty());
        assert_eq!(a, b, "same options {options} must give the same text");
    }
}

#[test]
fn stop_sequences_end_generation_and_never_appear() {
    let s = Server::start();
    let base = json!({"model": SMOL, "prompt": "Write a short poem about the sea.", "stream": false,
                      "options": {"temperature": 0, "num_predict": 48}});
    let full = generate_once(&s, base.clone())["response"].as_str().expect("text").to_string();
    // Pick a word from the middle of the unconstrained answer as the stop sequence.
    let words: Vec<&str> = full.split_whitespace().filter(|w| w.len() >= 3).collect();
    assert!(words.len() >= 4, "answer too short to test stops: {full:?}");
    let stop = words[words.len() / 2];
    let cut = full.find(stop).expect("word is in the text");
    let mut body = base.clone();
    body["options"]["stop"] = json!([stop]);
    body["stream"] = json!(true);
    let lines = s.ndjson("/api/generate", &body);
    let text = text_of(&lines, "generate");
    assert_eq!(text, full[..cut], "output must end right before the stop {stop:?}");
    assert!(!text.contains(stop));
    assert_eq!(lines.last().expect("final")["done_reason"], "stop");
}

#[test]
fn multibyte_characters_are_never_streamed_broken() {
    let s = Server::start();
    // Byte-level BPE splits most CJK characters over several tokens.
    let body = json!({"model": SMOL, "prompt": "日本の首都は東京です。京都は古い都です。大阪は", "raw": true,
                      "options": {"temperature": 0, "num_predict": 48}});
    let lines = s.ndjson("/api/generate", &body);
    let chunks: Vec<&str> = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert!(chunks.iter().all(|c| !c.contains('\u{fffd}')), "a chunk holds a broken character: {chunks:?}");
    let text: String = chunks.concat();
    assert!(text.chars().any(|c| c as u32 > 0x3000), "expected CJK output, got {text:?}");
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_stays_up() {
    let s = Server::start();
    let r = s.post("/api/generate", &json!({"model": "no-such-model", "prompt": "hi"}));
    assert_eq!(r.status(), 404);
    let v: Value = r.json().expect("json");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("no-such-model")), "{v}");

    let r = s.post_raw("/api/generate", "{\"model\":");
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().expect("json")["error"].as_str().is_some());

    let r = s.post("/api/chat", &json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": -5}}));
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("num_ctx")));

    let long = "word ".repeat(60_000);
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": long, "options": {"num_ctx": 2048}}));
    assert_eq!(r.status(), 400);
    let e = r.json::<Value>().expect("json")["error"].as_str().unwrap_or("").to_string();
    assert!(e.contains("2048") && e.contains("60"), "error should give both sizes: {e}");

    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "x", "raw": true, "system": "s"}));
    assert_eq!(r.status(), 400);
    let r = s.post("/api/chat", &json!({"model": SMOL, "messages": [{"role": "wizard", "content": "x"}]}));
    assert_eq!(r.status(), 400);
    let r = s.post("/api/generate", &json!({"model": "../../etc/passwd", "prompt": "x"}));
    assert_eq!(r.status(), 400);
    let r = s.post("/api/generate", &json!({"model": SMOL, "prompt": "x", "context": [999999999]}));
    assert_eq!(r.status(), 400);

    assert!(s.alive());
    // And it still generates.
    let v = generate_once(&s, json!({"model": SMOL, "prompt": "hi", "stream": false, "options": {"num_predict": 4}}));
    assert_eq!(v["done"], true);
}

#[test]
fn eight_concurrent_chats_are_decoded_together() {
    let s = std::sync::Arc::new(Server::start_with(&["--parallel", "8"]));
    // Warm the model so all eight start from a loaded instance.
    generate_once(&s, json!({"model": SMOL, "prompt": "", "stream": false}));
    let start = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let body = json!({"model": SMOL, "options": {"temperature": 0.7, "seed": i, "num_predict": 64},
                    "messages": [{"role": "user", "content": format!("Write a long story about dragon number {i}.")}]});
                let resp = s.post("/api/chat", &body);
                assert_eq!(resp.status(), 200);
                let mut first = None;
                let mut last = None;
                let mut done = false;
                for line in BufReader::new(resp).lines() {
                    let v: Value = serde_json::from_str(&line.expect("line")).expect("json");
                    assert!(v.get("error").is_none(), "{v}");
                    let t = start.elapsed();
                    first.get_or_insert(t);
                    last = Some(t);
                    done |= v["done"] == true;
                }
                assert!(done, "stream {i} did not finish");
                (first.expect("first chunk"), last.expect("last chunk"))
            })
        })
        .collect();
    let spans: Vec<_> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    // Decoded together: every stream had produced output before any stream finished.
    let latest_first = spans.iter().map(|s| s.0).max().expect("spans");
    let earliest_last = spans.iter().map(|s| s.1).min().expect("spans");
    assert!(latest_first < earliest_last, "streams ran one after another: {spans:?}");
}

#[test]
fn a_client_that_leaves_frees_its_slot() {
    // One slot: if the abandoned request kept it, the next request would wait for a whole
    // context of output (thousands of tokens) and the client timeout would fire first.
    let s = Server::start_with(&["--parallel", "1", "--context-length", "8192"]);
    let mut conn = std::net::TcpStream::connect(&s.addr).expect("connect");
    let body = json!({"model": SMOL, "prompt": "Count from one to ten thousand, one number per line.",
                      "options": {"num_predict": -1, "num_ctx": 8192, "temperature": 0}})
    .to_string();
    // The server's own address as Host: a loopback server refuses other names (DNS rebinding).
    write!(conn, "POST /api/generate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", s.addr, body.len())
        .expect("send");
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).expect("first bytes");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.contains("200 OK"), "{head}");
    drop(conn);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(45))
        .build()
        .expect("client");
    let v: Value = client
        .post(s.url("/api/generate"))
        .json(&json!({"model": SMOL, "prompt": "hi", "stream": false, "options": {"num_predict": 8}}))
        .send()
        .expect("second request was served: the first one's slot was freed")
        .json()
        .expect("json");
    assert_eq!(v["done"], true);
}

#[test]
fn tags_show_and_ps_describe_models() {
    let s = Server::start();
    let tags: Value = s.get("/api/tags").json().expect("json");
    let names: Vec<&str> = tags["models"].as_array().expect("models").iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(names.contains(&SMOL) && names.contains(&GEMMA), "{names:?}");
    let smol = tags["models"].as_array().expect("models").iter().find(|m| m["name"] == SMOL).expect("smol");
    assert_eq!(smol["details"]["family"], "llama");
    assert_eq!(smol["details"]["quantization_level"], "Q4_1");
    assert_eq!(smol["digest"].as_str().map(str::len), Some(64));

    let show: Value = s.post("/api/show", &json!({"model": GEMMA})).json().expect("json");
    assert_eq!(show["details"]["family"], "gemma3");
    assert!(show["template"].as_str().is_some_and(|t| t.contains("start_of_turn")), "{}", show["template"]);
    assert!(show["model_info"]["gemma3.context_length"].as_u64().is_some());
    assert_eq!(s.post("/api/show", &json!({"model": "nope"})).status(), 404);

    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["models"].as_array().map(Vec::len), Some(0));
    let loaded = generate_once(&s, json!({"model": GEMMA, "prompt": "", "stream": false}));
    assert_eq!(loaded["done_reason"], "load");
    let ps: Value = s.get("/api/ps").json().expect("json");
    let m = &ps["models"][0];
    assert_eq!(m["name"], GEMMA);
    assert_eq!(m["context_length"], 2048);
    assert!(m["expires_at"].as_str().is_some());
}

#[test]
fn keep_alive_zero_unloads_after_the_request() {
    let s = Server::start();
    generate_once(&s, json!({"model": SMOL, "prompt": "hi", "stream": false, "keep_alive": 0, "options": {"num_predict": 2}}));
    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["models"].as_array().map(Vec::len), Some(0), "{ps}");
    generate_once(&s, json!({"model": SMOL, "prompt": "", "stream": false, "keep_alive": -1}));
    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["models"][0]["name"], SMOL);
    let v = generate_once(&s, json!({"model": SMOL, "prompt": "", "stream": false, "keep_alive": 0}));
    assert_eq!(v["done_reason"], "unload");
    let ps: Value = s.get("/api/ps").json().expect("json");
    assert_eq!(ps["models"].as_array().map(Vec::len), Some(0), "{ps}");
}

#[test]
fn generate_honours_system_template_and_raw() {
    let s = Server::start();
    let body = |extra: Value| {
        let mut b = json!({"model": SMOL, "prompt": "Say hello.", "stream": false, "options": {"temperature": 0, "num_predict": 8}});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let plain = generate_once(&s, body(json!({})));
    // `system` is the chat's system message: the same prompt as a chat gives the same answer.
    let system = "You are a pirate. Always answer like a pirate.";
    let with_system = generate_once(&s, body(json!({"system": system})));
    let as_chat: Value = s
        .post("/api/chat", &json!({"model": SMOL, "stream": false, "options": {"temperature": 0, "num_predict": 8},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Say hello."}]}))
        .json()
        .expect("json");
    assert_eq!(with_system["prompt_eval_count"], as_chat["prompt_eval_count"]);
    assert_eq!(with_system["response"], as_chat["message"]["content"]);
    assert_ne!(with_system["prompt_eval_count"], plain["prompt_eval_count"]);
    let raw = generate_once(&s, body(json!({"raw": true})));
    assert!(raw["prompt_eval_count"].as_u64() < plain["prompt_eval_count"].as_u64(), "raw skips the template");
    // A request template in Ollama's Go syntax that renders what the model's template would.
    let go = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n";
    let templated = generate_once(&s, body(json!({"template": go})));
    assert_eq!(templated["prompt_eval_count"], plain["prompt_eval_count"]);
    assert_eq!(templated["response"], plain["response"], "the same prompt through an equivalent template");
}

#[test]
fn both_models_answer_a_chat() {
    let s = Server::start();
    for m in [SMOL, GEMMA] {
        let v: Value = s
            .post("/api/chat", &json!({"model": m, "stream": false, "options": {"temperature": 0, "num_predict": 12},
                                      "messages": [{"role": "user", "content": "What is 2 + 2?"}]}))
            .json()
            .expect("json");
        assert!(v["message"]["content"].as_str().is_some_and(|c| !c.trim().is_empty()), "{m}: {v}");
    }
}

#[test]
fn official_ollama_python_client_works_unchanged() {
    let s = Server::start();
    support::run_python("ollama_client.py", &[("OLLAMA_HOST", &format!("http://{}", s.addr)), ("MODEL", SMOL)]);
}

// ---------------------------------------------------------------- CLI

#[test]
fn run_answers_piped_prompt_deterministically() {
    let args = ["run", SMOL, "--temperature", "0", "--num-predict", "32"];
    let a = run_with_stdin(&args, "What is the capital of France?\n");
    assert!(a.status.success(), "stderr: {}", String::from_utf8_lossy(&a.stderr));
    let text = String::from_utf8_lossy(&a.stdout).to_string();
    assert!(!text.trim().is_empty());
    let b = run_with_stdin(&args, "What is the capital of France?\n");
    assert_eq!(text, String::from_utf8_lossy(&b.stdout), "temperature 0 must repeat");
}

#[test]
fn run_takes_a_gguf_path_and_options() {
    let path = support::model_path(SMOL);
    let out = run_with_stdin(
        &["run", path.to_str().expect("utf8 path"), "Say one word.", "--option", "num_predict=4", "--option", "top_k=5"],
        "",
    );
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

#[test]
fn run_reports_bad_input_with_an_exit_code() {
    let out = run_with_stdin(&["run", "no-such-model", "hi"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = run_with_stdin(&["run", SMOL, "hi", "--num-ctx", "-5"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("num_ctx"));
    let out = run_with_stdin(&["run", SMOL, "hi", "--option", "bogus=1"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[test]
fn list_and_show_read_the_store_without_a_server() {
    let out = hearth().arg("list").output().expect("list");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(SMOL) && text.contains(GEMMA), "{text}");
    let out = hearth().args(["show", GEMMA]).output().expect("show");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gemma3") && text.contains("Q4_K_M"), "{text}");
}

#[test]
fn ps_asks_the_running_server() {
    let s = Server::start();
    generate_once(&s, json!({"model": SMOL, "prompt": "", "stream": false}));
    let out = hearth().args(["ps", "--host", &s.addr]).output().expect("ps");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(SMOL));
}

// ---------------------------------------------------------------- stdio

#[test]
fn stdio_answers_each_json_line() {
    let mut child = hearth()
        .args(["stdio", SMOL])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stdio");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = [
        json!({"prompt": "Say hi.", "options": {"num_predict": 6, "temperature": 0}}).to_string(),
        "not json".to_string(),
        json!({"messages": [{"role": "user", "content": "Say bye."}], "options": {"num_predict": 6}}).to_string(),
        json!({"prompt": "Count.", "stream": true, "options": {"num_predict": 5}}).to_string(),
    ]
    .join("\n");
    stdin.write_all(input.as_bytes()).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    assert_eq!(lines[0]["done"], true);
    assert!(lines[0]["response"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(lines[1]["error"].as_str().is_some());
    assert_eq!(lines[2]["done"], true);
    assert!(lines[2]["message"]["content"].as_str().is_some());
    assert_eq!(lines.last().expect("last")["done"], true);
    assert!(lines.len() > 4, "streamed request gives several lines");
}
