//! Hostile clients against the real server on loopback: browser origins and rebound host
//! names are refused before any work, in each API's error shape; allowed pages get CORS.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{hearth, Server, SMOL};

/// A request as a browser page would send it, with the headers given.
fn send(s: &Server, method: reqwest::Method, path: &str, headers: &[(&str, &str)], body: &str) -> reqwest::blocking::Response {
    let mut req = reqwest::blocking::Client::new().request(method, s.url(path)).timeout(Duration::from_secs(120)).body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().expect("request")
}

#[test]
fn a_web_page_cannot_drive_a_loopback_server() {
    let s = Server::start();
    let evil = [("origin", "http://evil.example"), ("content-type", "text/plain")];
    let generate = json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 2}}).to_string();
    for (method, path, body) in [
        (reqwest::Method::POST, "/api/generate", generate.as_str()),
        (reqwest::Method::POST, "/api/pull", r#"{"model": "http://127.0.0.1:9/x.gguf"}"#),
        (reqwest::Method::POST, "/api/copy", r#"{"source": "smollm2:135m", "destination": "stolen"}"#),
        (reqwest::Method::DELETE, "/api/delete", r#"{"model": "smollm2:135m"}"#),
        (reqwest::Method::GET, "/api/tags", ""),
    ] {
        let resp = send(&s, method, path, &evil, body);
        assert_eq!(resp.status(), 403, "{path}");
        let body: Value = resp.json().expect("json");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("origin")), "{path}: {body}");
    }
    let resp = send(&s, reqwest::Method::POST, "/v1/completions", &evil, r#"{"model": "smollm2:135m", "prompt": "Hi"}"#);
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().expect("json");
    assert!(body["error"]["message"].as_str().is_some_and(|e| e.contains("origin")), "{body}");
    // DNS rebinding: the page's own (rebound) name in Host, and no Origin on a same-origin GET.
    let resp = send(&s, reqwest::Method::GET, "/api/tags", &[("host", "evil.example:11434")], "");
    assert_eq!(resp.status(), 403);
    let resp = send(&s, reqwest::Method::GET, "/api/conversations", &[("host", "evil.example")], "");
    assert_eq!(resp.status(), 403);
    // Nothing was copied, deleted or generated.
    let tags: Value = s.get("/api/tags").json().expect("json");
    let names: Vec<&str> = tags["models"].as_array().expect("models").iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(names.contains(&SMOL) && !names.iter().any(|n| n.starts_with("stolen")), "{names:?}");
    assert!(s.loaded().is_empty(), "a refused request loaded a model");
}

#[test]
fn loopback_pages_get_cors_and_clients_without_an_origin_work_as_before() {
    let s = Server::start_with_env(&[], &[("HEARTH_ORIGINS", "https://app.example")]);
    let resp = send(&s, reqwest::Method::OPTIONS, "/api/chat", &[("origin", "http://localhost:3000"), ("access-control-request-method", "POST"), ("access-control-request-headers", "content-type")], "");
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("http://localhost:3000"));
    let resp = send(&s, reqwest::Method::GET, "/api/tags", &[("origin", "https://app.example")], "");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("https://app.example"));
    // curl -d '{...}': a form content type and no Origin.
    let body = json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 2}}).to_string();
    let resp = send(&s, reqwest::Method::POST, "/api/generate", &[("content-type", "application/x-www-form-urlencoded")], &body);
    assert_eq!(resp.status(), 200);
    let done: Value = resp.json().expect("json");
    assert_eq!(done["done"], true, "{done}");
}

#[test]
fn an_origin_without_a_scheme_is_refused_at_start_naming_the_variable() {
    let mut child = hearth()
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .env("HEARTH_ORIGINS", "app.example")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // A server that starts anyway is stopped rather than waited on forever.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().expect("wait").is_none() {
        let _ = child.kill();
        panic!("hearth serve started with an origin that has no scheme");
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HEARTH_ORIGINS") && err.contains("scheme"), "{err}");
}

/// `hearth key new`'s key and its `auth.keys` entry, indented for the config file.
pub(crate) fn new_key(name: &str, scopes: &str) -> (String, String) {
    let out = hearth().args(["key", "new", name, "--scopes", scopes]).output().expect("hearth key new");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 4, "{text}");
    let entry: String = lines[1..].iter().map(|l| format!("    {l}\n")).collect();
    (lines[0].to_string(), entry)
}

fn with_key(s: &Server, method: reqwest::Method, path: &str, key: Option<&str>, body: Option<&Value>) -> reqwest::blocking::Response {
    let mut req = s.client.request(method, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().expect("request")
}

#[test]
fn keys_and_scopes_guard_every_route_and_reload_with_the_file() {
    let (reader, reader_entry) = new_key("reader", "models:read");
    let (writer, writer_entry) = new_key("writer", "generate");
    let (admin, admin_entry) = new_key("ops", "admin");
    let dir = crate::support::temp_dir("keys");
    let config = dir.join("hearth.yaml");
    std::fs::write(&config, format!("auth:\n  keys:\n{reader_entry}{writer_entry}{admin_entry}")).expect("write config");
    assert!(!std::fs::read_to_string(&config).expect("read").contains(&reader), "the config holds only hashes");
    let s = Server::start_with(&["--config", config.to_str().expect("utf8")]);
    use reqwest::Method;
    assert_eq!(with_key(&s, Method::GET, "/health", None, None).status(), 200);
    for path in ["/api/tags", "/v1/models", "/metrics", "/api/version", "/api/conversations", "/"] {
        assert_eq!(with_key(&s, Method::GET, path, None, None).status(), 401, "{path}");
    }
    assert_eq!(with_key(&s, Method::GET, "/api/tags", Some("hth_not-a-key"), None).status(), 401);
    assert_eq!(with_key(&s, Method::GET, "/api/tags", Some(&reader), None).status(), 200);
    let generate = json!({"model": SMOL, "prompt": "Hi", "stream": false, "options": {"num_predict": 3, "temperature": 0}});
    let resp = with_key(&s, Method::POST, "/api/generate", Some(&reader), Some(&generate));
    assert_eq!(resp.status(), 403);
    assert!(resp.json::<Value>().expect("json")["error"].as_str().is_some_and(|e| e.contains("generate scope")));
    let copy = json!({"source": SMOL, "destination": "stolen"});
    assert_eq!(with_key(&s, Method::POST, "/api/copy", Some(&writer), Some(&copy)).status(), 403);
    // x-api-key works like a bearer key.
    let resp = s.client.post(s.url("/api/generate")).header("x-api-key", &writer).json(&generate).send().expect("generate");
    assert_eq!(resp.status(), 200);
    let done: Value = resp.json().expect("json");
    let usage: Value = with_key(&s, Method::GET, "/api/usage", Some(&writer), None).json().expect("usage");
    assert_eq!(usage["keys"].as_array().map(Vec::len), Some(1), "{usage}");
    assert_eq!(usage["keys"][0]["usage"]["completion_tokens"], done["eval_count"]);
    assert_eq!(usage["keys"][0]["usage"]["prompt_tokens"], done["prompt_eval_count"]);
    let all: Value = with_key(&s, Method::GET, "/api/usage", Some(&admin), None).json().expect("usage");
    assert_eq!(all["keys"].as_array().map(Vec::len), Some(3), "an admin key sees every key: {all}");
    // The client commands send HEARTH_API_KEY.
    let ps = hearth().args(["ps", "--host", &s.addr]).env("HEARTH_API_KEY", &reader).output().expect("ps");
    assert!(ps.status.success(), "{}", String::from_utf8_lossy(&ps.stderr));
    let ps = hearth().args(["ps", "--host", &s.addr]).env_remove("HEARTH_API_KEY").output().expect("ps");
    assert!(!ps.status.success());
    // Reload: the reader's key is dropped, the others stay with their usage.
    std::fs::write(&config, format!("auth:\n  keys:\n{writer_entry}{admin_entry}")).expect("rewrite config");
    assert_eq!(with_key(&s, Method::POST, "/api/config/reload", Some(&writer), None).status(), 403);
    let report: Value = with_key(&s, Method::POST, "/api/config/reload", Some(&admin), None).json().expect("reload");
    assert_eq!(report["keys"], 2, "{report}");
    assert_eq!(with_key(&s, Method::GET, "/api/tags", Some(&reader), None).status(), 401);
    let usage: Value = with_key(&s, Method::GET, "/api/usage", Some(&writer), None).json().expect("usage");
    assert_eq!(usage["keys"][0]["usage"]["requests"], 1, "{usage}");
}

#[test]
fn serving_beyond_loopback_without_keys_is_refused() {
    let out = hearth()
        .args(["serve", "--host", "0.0.0.0", "--port", "0", "--config", "/dev/null"])
        .env_remove("HEARTH_INSECURE_NO_AUTH")
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start") && err.contains("--insecure-no-auth") && err.contains("hearth key new"), "{err}");
}

#[test]
fn two_fronts_sharing_redis_enforce_one_keys_rate_limit_together() {
    let redis = crate::support::Redis::start(None);
    let (key, entry) = new_key("shared", "generate");
    let config = crate::support::temp_dir("shared-limits").join("hearth.yaml");
    std::fs::write(&config, format!("cache:\n  redis_url: {}\nauth:\n  keys:\n{entry}      rpm: 4\n", redis.url())).expect("write config");
    let fronts = [Server::start_with(&["--config", config.to_str().expect("utf8")]), Server::start_with(&["--config", config.to_str().expect("utf8")])];
    // A request that spends one from the key's limit and costs nothing else: the model does
    // not exist (404, after admission).
    let ask = |s: &Server| with_key(s, reqwest::Method::POST, "/api/chat", Some(&key), Some(&json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})));
    // Four requests, two on each front: within the limit.
    for i in 0..4 {
        assert_eq!(ask(&fronts[i % 2]).status(), 404, "request {i}");
    }
    // Each front has seen only two, but the key's four are spent on both.
    for s in &fronts {
        let resp = ask(s);
        assert_eq!(resp.status(), 429);
        let retry: u64 = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect("Retry-After");
        assert!((1..=15).contains(&retry), "retry after {retry} s");
        assert!(resp.text().expect("body").contains("requests per minute"));
    }
    let usage: Value = with_key(&fronts[0], reqwest::Method::GET, "/api/usage", Some(&key), None).json().expect("usage");
    assert_eq!((usage["keys"][0]["usage"]["requests"].as_u64(), usage["keys"][0]["usage"]["limited"].as_u64()), (Some(2), Some(1)), "{usage}");
    // Redis gone: each front counts on its own again rather than refusing everything.
    drop(redis);
    assert_eq!(ask(&fronts[0]).status(), 404);
}
