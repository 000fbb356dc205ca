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
