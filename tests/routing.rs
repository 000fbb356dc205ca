//! Providers and routes against real upstreams on loopback: a second `hearth serve` as an
//! `ollama` and an `openai` provider, llama.cpp's `llama-server` as an `openai` and an
//! `anthropic` provider, a fallback route whose first target is killed with SIGKILL, and a
//! split route's weights, stickiness, counts and feedback.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{run_python, temp_dir, Server, SMOL};

fn config_file(text: &str) -> std::path::PathBuf {
    let path = temp_dir("routing").join("hearth.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn front(config: &std::path::Path) -> Server {
    Server::start_with(&["--config", config.to_str().expect("path")])
}

/// Waits until the front lists `name` (a provider's models are listed in the background).
fn wait_listed(s: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tags: Value = s.get("/api/tags").json().expect("tags");
        let listed: Vec<&str> = tags["models"].as_array().expect("models").iter().filter_map(|m| m["name"].as_str()).collect();
        if listed.contains(&name) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never listed: {listed:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn target_of(resp: &reqwest::blocking::Response) -> String {
    resp.headers().get("x-hearth-target").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

fn route<'a>(routes: &'a Value, name: &str) -> &'a Value {
    routes["routes"].as_array().expect("routes").iter().find(|r| r["name"] == name).expect("route listed")
}

fn route_target<'a>(routes: &'a Value, route_name: &str, target: &str) -> &'a Value {
    route(routes, route_name)["targets"].as_array().expect("targets").iter().find(|t| t["name"] == target).expect("target listed")
}

#[test]
fn a_second_hearth_serves_as_an_ollama_and_an_openai_provider() {
    let upstream = Server::start();
    let config = config_file(&format!(
        "providers:\n  up:\n    kind: ollama\n    url: http://{0}\n  upo:\n    kind: openai\n    url: http://{0}\n    price: {{ input_per_1k: 1.0, output_per_1k: 2.0 }}\n",
        upstream.addr
    ));
    let s = front(&config);
    wait_listed(&s, "up/smollm2:135m");
    wait_listed(&s, "upo/smollm2:135m");

    let resp = s.post("/api/chat", &json!({"model": "up/smollm2:135m", "messages": [{"role": "user", "content": "Say hi."}], "stream": false, "options": {"num_predict": 6}}));
    assert_eq!(resp.status(), 200);
    assert_eq!(target_of(&resp), "up/smollm2:135m");
    let v: Value = resp.json().expect("json");
    assert_eq!((v["target"].as_str(), v["done"].as_bool()), (Some("up/smollm2:135m"), Some(true)));
    assert!((1..=6).contains(&v["eval_count"].as_u64().expect("eval_count")) && v["prompt_eval_count"].as_u64() > Some(0), "{v}");
    let shown: Value = s.post("/api/show", &json!({"model": "up/smollm2:135m"})).json().expect("show");
    assert_eq!((shown["remote_model"].as_str(), shown["remote_host"].as_str()), (Some(SMOL), Some(format!("http://{}", upstream.addr).as_str())), "{shown}");
    // The model ran upstream: nothing is loaded in the front.
    assert!(s.loaded().is_empty(), "{:?}", s.loaded());
    assert_eq!(upstream.loaded(), [SMOL]);

    // The OpenAI provider's answer streams back as Ollama's NDJSON.
    let lines = s.ndjson("/api/generate", &json!({"model": "upo/smollm2:135m", "prompt": "Count to five.", "options": {"num_predict": 8}}));
    let last = lines.last().expect("lines");
    assert_eq!(last["done"], true);
    assert!((1..=8).contains(&last["eval_count"].as_u64().expect("eval_count")), "{last}");
    assert!(lines.len() >= 2, "{lines:?}");

    // What a provider's API can't give is refused, naming it.
    let resp = s.post("/api/chat", &json!({"model": "up/smollm2:135m", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "stream": false}));
    assert_eq!(resp.status(), 400);
    assert!(resp.text().expect("body").contains("logprobs"));
    // The upstream's own 404 comes through as the client's error.
    let resp = s.post("/api/chat", &json!({"model": "up/no-such-model", "messages": [{"role": "user", "content": "x"}], "stream": false}));
    assert_eq!(resp.status(), 404, "{:?}", resp.text());

    // The command line reaches providers through the config file too: `run` and `stdio`.
    let out = crate::support::hearth().env("HEARTH_CONFIG", &config).args(["run", "up/smollm2:135m", "Say hi.", "--num-predict", "4"]).output().expect("run");
    assert!(out.status.success() && !out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut stdio = crate::support::hearth()
        .env("HEARTH_CONFIG", &config)
        .args(["stdio", "upo/smollm2:135m"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("stdio");
    std::io::Write::write_all(&mut stdio.stdin.take().expect("stdin"), b"{\"prompt\": \"Say hi.\", \"options\": {\"num_predict\": 4}}\n").expect("write");
    let out = stdio.wait_with_output().expect("stdio output");
    let line: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().expect("a line")).expect("json line");
    assert_eq!((line["done"].as_bool(), line["target"].as_str()), (Some(true), Some("upo/smollm2:135m")), "{line}");

    run_python("provider_clients.py", &[("HEARTH_URL", &format!("http://{}", s.addr)), ("OLLAMA_MODEL", "up/smollm2:135m"), ("OPENAI_MODEL", "upo/smollm2:135m")]);
    // Every generation above ran upstream; the front holds no model still.
    assert!(s.loaded().is_empty());
}

#[test]
fn a_fallback_route_keeps_answering_when_its_first_target_is_killed() {
    let mut upstream = Server::start();
    let port = upstream.port().to_string();
    let config = config_file(&format!(
        "providers:\n  up:\n    kind: ollama\n    url: http://{}\n    models: [smollm2:135m]\nroutes:\n  chat:\n    strategy: fallback\n    targets:\n      - model: up/smollm2:135m\n      - model: smollm2:135m\nrouting:\n  breaker: {{ failures: 2, cooldown: 3s }}\n",
        upstream.addr
    ));
    let s = front(&config);
    let ollama = |s: &Server| s.post("/api/chat", &json!({"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "stream": false, "options": {"num_predict": 3}}));
    let openai = |s: &Server| s.post("/v1/chat/completions", &json!({"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}));
    for _ in 0..2 {
        let resp = ollama(&s);
        assert_eq!((resp.status().as_u16(), target_of(&resp)), (200, "up/smollm2:135m".to_string()));
    }
    // A conversation's first turn, answered upstream.
    let turn = |s: &Server, text: &str| s.post("/api/chat", &json!({"model": "chat", "conversation_id": "trip", "messages": [{"role": "user", "content": text}], "stream": false, "options": {"num_predict": 3}}));
    assert_eq!(target_of(&turn(&s, "Hello.")), "up/smollm2:135m");

    // An answer already streaming when its target dies is not retried: it ends with an error
    // line.
    let resp = s.client.post(s.url("/api/chat")).json(&json!({"model": "chat", "messages": [{"role": "user", "content": "Tell a long story."}], "options": {"num_predict": 400, "temperature": 1}})).send().expect("stream");
    assert_eq!(target_of(&resp), "up/smollm2:135m");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(resp));
    let first: Value = serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["done"], false);
    upstream.kill();
    let last: Value = serde_json::from_str(&lines.map_while(Result::ok).last().expect("a last line")).expect("json");
    assert!(last["error"].as_str().is_some_and(|e| e.contains("up")), "{last}");

    // Every request after the kill is answered, by the local model.
    let seed = |s: &Server| s.post("/generate", &json!({"model": "chat", "prompt": "Say hi.", "settings": {"max_tokens": 3}}));
    for i in 0..6 {
        let resp = match i % 3 {
            0 => ollama(&s),
            1 => openai(&s),
            _ => seed(&s),
        };
        assert_eq!((resp.status().as_u16(), target_of(&resp)), (200, SMOL.to_string()), "request {i}");
        let v: Value = resp.json().expect("json");
        assert!(v["target"] == SMOL || v["metadata"]["target"] == SMOL, "{v}");
        if i < 2 {
            assert_eq!(v["route"], "chat");
            assert_eq!(v["tried"], json!(["up/smollm2:135m"]), "{v}");
        }
    }
    // The conversation goes on with whichever target answers.
    assert_eq!(target_of(&turn(&s, "Still there?")), SMOL);
    let c: Value = s.get("/api/conversations/trip").json().expect("conversation");
    let roles: Vec<&str> = c["messages"].as_array().expect("messages").iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"], "{c}");
    let routes: Value = s.get("/api/routes").json().expect("routes");
    let up = route_target(&routes, "chat", "up/smollm2:135m");
    // The stream that broke counts as an error but not as a fallback.
    assert!(up["errors"].as_u64() >= Some(2) && up["errors_by_kind"]["stream"] == 1 && up["fallbacks"].as_u64() == up["errors"].as_u64().map(|e| e - 1), "{up}");
    assert_eq!(up["breaker_trips"], 1, "{up}");
    let local = route_target(&routes, "chat", SMOL);
    assert_eq!((local["requests"].as_u64(), local["errors"].as_u64()), (Some(7), Some(0)), "{local}");
    // The metrics agree with the route's own counts.
    assert_eq!(s.metric("hearth_route_fallbacks_total", "target=\"up/smollm2:135m\""), up["fallbacks"].as_f64());
    assert_eq!(s.metric("hearth_route_requests_total", &format!("result=\"ok\",route=\"chat\",target=\"{SMOL}\"")), Some(7.0));

    // The upstream comes back on its port: after the cooldown a probe goes to it, and traffic
    // returns.
    let _upstream = Server::start_with(&["--port", &port]);
    std::thread::sleep(Duration::from_millis(3200));
    let resp = ollama(&s);
    assert_eq!((resp.status().as_u16(), target_of(&resp)), (200, "up/smollm2:135m".to_string()));
    let routes: Value = s.get("/api/routes").json().expect("routes");
    assert_eq!(route_target(&routes, "chat", "up/smollm2:135m")["breaker"], "closed");
}

#[test]
fn a_split_follows_its_weights_sticks_per_client_and_counts_what_clients_saw() {
    let text = |a: u32, b: u32| format!("routes:\n  ab:\n    strategy: split\n    targets:\n      - {{ model: smollm2:135m, weight: {a} }}\n      - {{ name: cold, model: smollm2:135m, weight: {b}, options: {{ temperature: 0 }} }}\n");
    let config = config_file(&text(70, 30));
    let s = front(&config);
    // Deterministic, so every answer after the first is a cache hit: 1,000 requests stay quick.
    let ask = |key: &str| {
        let resp = s.client.post(s.url("/api/generate")).header("x-hearth-sticky", key).json(&json!({"model": "ab", "prompt": "Hi", "stream": false, "options": {"temperature": 0, "num_predict": 2}})).send().expect("request");
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["x-request-id"].to_str().expect("id").to_string();
        let v: Value = resp.json().expect("json");
        (v["variant"].as_str().expect("variant").to_string(), id)
    };
    let mut first = std::collections::HashMap::new();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..1000 {
        let (variant, _) = ask(&format!("user-{i}"));
        *counts.entry(variant.clone()).or_default() += 1;
        first.insert(i, variant);
    }
    let warm = counts.get(SMOL).copied().unwrap_or(0);
    assert!((650..=750).contains(&warm), "70% of 1,000 within 5%: {counts:?}");
    for i in (0..1000).step_by(25) {
        assert_eq!(ask(&format!("user-{i}")).0, first[&i], "a client stays on its variant");
        *counts.entry(first[&i].clone()).or_default() += 1;
    }
    let routes: Value = s.get("/api/routes").json().expect("routes");
    for (variant, n) in &counts {
        let t = route_target(&routes, "ab", variant);
        assert_eq!(t["requests"].as_u64(), Some(*n), "{t}");
        assert_eq!(s.metric("hearth_route_requests_total", &format!("result=\"ok\",route=\"ab\",target=\"{variant}\"")), Some(*n as f64));
    }

    let shown: Value = s.post("/api/show", &json!({"model": "ab"})).json().expect("show");
    assert_eq!((shown["route"]["strategy"].as_str(), shown["route"]["targets"][1]["weight"].as_u64()), (Some("split"), Some(30)), "{shown}");

    // Feedback lands on the variant that served the request.
    let (variant, id) = ask("user-feedback");
    let resp = s.post("/api/feedback", &json!({"request_id": id, "score": 0.75, "label": "good"}));
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().expect("json");
    assert_eq!((v["route"].as_str(), v["variant"].as_str()), (Some("ab"), Some(variant.as_str())));
    let routes: Value = s.get("/api/routes").json().expect("routes");
    let fb = &route_target(&routes, "ab", &variant)["feedback"];
    assert_eq!((fb["count"].as_u64(), fb["mean_score"].as_f64(), fb["labels"]["good"].as_u64()), (Some(1), Some(0.75), Some(1)));
    assert_eq!(s.post("/api/feedback", &json!({"request_id": "nobody", "score": 1})).status(), 404);
    assert_eq!(s.post("/api/feedback", &json!({"request_id": id})).status(), 400);

    // A reload moves every request to the other variant; the counts carry on.
    std::fs::write(&config, text(0, 100)).expect("rewrite");
    assert_eq!(s.post("/api/config/reload", &json!({})).status(), 200);
    for i in 0..20 {
        assert_eq!(ask(&format!("user-{i}")).0, "cold");
    }
}

/// llama.cpp's server, started on a free loopback port; ended by its PID on drop.
struct LlamaServer {
    child: std::process::Child,
    addr: String,
}

impl LlamaServer {
    fn start() -> LlamaServer {
        let bin = std::env::var("HEARTH_TEST_LLAMA_SERVER").expect("HEARTH_TEST_LLAMA_SERVER names llama-server (scripts/test.sh builds it with scripts/build-peer.sh)");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = std::process::Command::new(bin)
            .args(["-m", crate::support::model_path(SMOL).to_str().expect("path"), "--host", "127.0.0.1", "--port", &port.to_string(), "-c", "4096", "-np", "2", "--jinja"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start llama-server");
        let server = LlamaServer { child, addr: format!("127.0.0.1:{port}") };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(format!("http://{}/health", server.addr)).send().map(|r| r.status() != 200).unwrap_or(true) {
            assert!(Instant::now() < deadline, "llama-server did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn llama_server_serves_as_an_openai_and_an_anthropic_provider() {
    let upstream = LlamaServer::start();
    let config = config_file(&format!(
        "providers:\n  ls:\n    kind: openai\n    url: http://{0}\n  lsa:\n    kind: anthropic\n    url: http://{0}\n    models: [smol]\n    price: {{ input_per_1k: 3.0, output_per_1k: 15.0 }}\nroutes:\n  chat:\n    strategy: fallback\n    targets:\n      - model: lsa/smol\n",
        upstream.addr
    ));
    let s = front(&config);
    // Its model list comes from its /v1/models.
    let listed: Value = serde_json::from_str(&reqwest::blocking::get(format!("http://{}/v1/models", upstream.addr)).expect("models").text().expect("body")).expect("json");
    let id = listed["data"][0]["id"].as_str().expect("a model id").to_string();
    wait_listed(&s, &format!("ls/{id}"));

    for model in ["ls/smol", "lsa/smol"] {
        // Ollama's API in front, streaming, with a system prompt and a stop sequence.
        let lines = s.ndjson("/api/chat", &json!({"model": model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to ten."}], "options": {"num_predict": 10, "stop": ["\n\n\n"]}}));
        let last = lines.last().expect("lines");
        assert_eq!((last["done"].as_bool(), last["target"].as_str()), (Some(true), Some(model)), "{last}");
        assert!((1..=10).contains(&last["eval_count"].as_u64().expect("eval_count")), "{last}");
        // OpenAI's API in front, one object and SSE.
        let resp = s.post("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6}));
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().expect("json");
        assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
        assert!((1..=6).contains(&v["usage"]["completion_tokens"].as_u64().expect("usage")), "{v}");
        let resp = s.post("/v1/chat/completions", &json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 6, "stream": true}));
        let body = resp.text().expect("body");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    }
    // Through a route, the anthropic provider's answer is costed at its prices.
    let resp = s.post("/api/chat", &json!({"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "stream": false, "options": {"num_predict": 4}}));
    assert_eq!((resp.status().as_u16(), target_of(&resp)), (200, "lsa/smol".to_string()));
    let v: Value = resp.json().expect("json");
    let routes: Value = s.get("/api/routes").json().expect("routes");
    let t = route_target(&routes, "chat", "lsa/smol");
    let (input, output) = (t["tokens"]["input"].as_f64().expect("input"), t["tokens"]["output"].as_f64().expect("output"));
    assert_eq!(output, v["eval_count"].as_f64().expect("eval_count"));
    let cost = t["cost"].as_f64().expect("cost");
    assert!((cost - (input * 3.0 + output * 15.0) / 1000.0).abs() < 1e-9, "{t}");
}

#[test]
fn config_check_shows_providers_and_routes_and_refuses_an_unset_key_variable() {
    let text = "providers:\n  cloud:\n    kind: openai\n    url: https://api.example.com\n    api_key_env: HEARTH_TEST_CLOUD_KEY\nroutes:\n  r:\n    strategy: split\n    targets:\n      - { model: cloud/gpt, weight: 1 }\n";
    let config = config_file(text);
    let path = config.to_str().expect("path");
    let out = crate::support::hearth().env_remove("HEARTH_TEST_CLOUD_KEY").args(["config", "check", path]).output().expect("check");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HEARTH_TEST_CLOUD_KEY (api_key_env) is not set"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = crate::support::hearth().env("HEARTH_TEST_CLOUD_KEY", "sk-test-not-shown").args(["config", "check", path]).output().expect("check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("provider cloud: openai https://api.example.com, key from $HEARTH_TEST_CLOUD_KEY") && stdout.contains("route r: split cloud/gpt 1"), "{stdout}");
    assert!(!stdout.contains("sk-test-not-shown"), "the key is never shown");
    // serve refuses to start the same way.
    let out = crate::support::hearth().env_remove("HEARTH_TEST_CLOUD_KEY").args(["serve", "--port", "0", "--config", path]).output().expect("serve");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("HEARTH_TEST_CLOUD_KEY"));
}
