//! The HTTP router on the fake backend, driven without a socket (tower's `oneshot`): wire
//! shapes, status codes and error bodies of both APIs, and what a client sees when a worker
//! dies. The real binary on real models is tested in `tests/`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::backend::fake::FakeBackend;
use crate::metrics::Metrics;
use crate::resources::tests::{limits, manager, TempModels};
use crate::service::{catalog::Catalog, ServiceSettings};

struct Fixture {
    app: Router,
    fake: FakeBackend,
    _models: TempModels,
}

fn fixture() -> Fixture {
    let fake = FakeBackend::default();
    let (manager, models) = manager(&fake, limits(1000));
    let service = Service::new(manager, crate::cache::ResponseCache::disabled(), None, Metrics::new(Default::default()), Catalog::default(), ServiceSettings::default());
    Fixture { app: router(Parts::new(service).into()), fake, _models: models }
}

/// Sends one request; returns the status, the content type and the body.
async fn send(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String, String) {
    let req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    let req = match body {
        Some(b) => req.body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ctype, String::from_utf8(bytes.to_vec()).expect("utf8"))
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn generate_streams_ndjson_ending_in_done_with_counts() {
    let f = fixture();
    let (status, ctype, body) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "x y", "options": {"num_predict": 3}}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ctype, "application/x-ndjson");
    let lines: Vec<Value> = body.lines().map(json_of).collect();
    assert_eq!(lines.len(), 4, "{body}");
    let text: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(text, "t0 t1 t2 ");
    let last = lines.last().expect("last");
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 3);
    assert_eq!(last["prompt_eval_count"], 2);
    assert!(lines[..3].iter().all(|l| l["done"] == false));
}

#[tokio::test]
async fn chat_without_streaming_answers_one_object() {
    let f = fixture();
    let (status, _, body) = send(
        &f.app,
        "POST",
        "/api/chat",
        Some(json!({"model": "a", "stream": false, "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 2}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = json_of(&body);
    assert_eq!(v["message"]["role"], "assistant");
    assert_eq!(v["message"]["content"], "t0 t1 ");
    assert_eq!(v["done"], true);
    assert_eq!(v["model"], "a");
}

#[tokio::test]
async fn openai_chat_completions_answer_in_openai_shape() {
    let f = fixture();
    let (status, _, body) = send(
        &f.app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "a", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v = json_of(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "t0 t1 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn openai_streams_sse_ending_in_done() {
    let f = fixture();
    let (status, ctype, body) = send(
        &f.app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "a", "max_tokens": 2, "stream": true, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| json_of(e))
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "t0 t1 ");
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let f = fixture();
    let (status, _, body) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "nope", "prompt": "x"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&body)["error"].as_str().is_some_and(|e| e.contains("nope")), "{body}");

    let (status, _, body) = send(&f.app, "POST", "/api/chat", Some(json!({"model": "a", "messages": "not a list"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["error"].is_string(), "{body}");

    let (status, _, body) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "x", "options": {"temperature": -1}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["error"].as_str().is_some_and(|e| e.contains("temperature")), "{body}");

    let (status, _, body) = send(&f.app, "POST", "/v1/chat/completions", Some(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v = json_of(&body);
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "OpenAI's error shape: {body}");

    let (status, _, body) = send(&f.app, "GET", "/no/such/route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&body)["error"].is_string(), "{body}");
    assert_eq!(f.fake.loads(), 0);
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_refused_before_any_output() {
    let f = fixture();
    f.fake.settings(|s| s.n_ctx_slot = 16);
    let (status, _, body) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "w ".repeat(40)}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(json_of(&body)["error"].as_str().is_some_and(|e| e.contains("prompt is too long")), "{body}");
}

#[tokio::test]
async fn ps_lists_what_was_loaded() {
    let f = fixture();
    let (status, _, _) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "x", "options": {"num_predict": 1}}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = send(&f.app, "GET", "/api/ps", None).await;
    assert_eq!(status, StatusCode::OK);
    let v = json_of(&body);
    let models = v["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{body}");
    assert_eq!(models[0]["name"], "a:latest");
    assert_eq!(models[0]["size"], 100u64 << 20);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_by_a_dead_worker_ends_in_an_error_line_and_the_next_request_succeeds() {
    let f = fixture();
    f.fake.settings(|s| s.token_delay = std::time::Duration::from_secs(1));
    let req = Request::builder()
        .method("POST")
        .uri("/api/generate")
        .body(Body::from(json!({"model": "a", "prompt": "x", "options": {"num_predict": 100}}).to_string()))
        .expect("request");
    let resp = f.app.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The first token arrives; then the worker dies.
    let first = body.frame().await.expect("a frame").expect("ok").into_data().expect("data");
    assert_eq!(json_of(std::str::from_utf8(&first).expect("utf8").trim())["response"], "t0 ");
    f.fake.kill("a:latest");
    let rest = body.collect().await.expect("rest").to_bytes();
    let lines: Vec<Value> = std::str::from_utf8(&rest).expect("utf8").lines().map(json_of).collect();
    let last = lines.last().expect("an error line");
    assert!(last["error"].as_str().is_some_and(|e| e.contains("worker")), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.get("error").is_some()).count(), 1);

    f.fake.settings(|s| s.token_delay = std::time::Duration::ZERO);
    let (status, _, body) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "x", "stream": false, "options": {"num_predict": 1}}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json_of(&body)["response"], "t0 ");
    assert_eq!(f.fake.loads(), 2);
}

#[tokio::test]
async fn a_dead_worker_costs_a_non_streaming_request_one_500() {
    let f = fixture();
    f.fake.settings(|s| s.token_delay = std::time::Duration::from_millis(20));
    let app = f.app.clone();
    let request = tokio::spawn(async move {
        send(&app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "x", "stream": false, "options": {"num_predict": 1000}}))).await
    });
    crate::resources::tests::eventually("the generation is under way", || f.fake.tokens_sent() > 0).await;
    f.fake.kill("a:latest");
    let (status, _, body) = request.await.expect("task");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(json_of(&body)["error"].as_str().is_some_and(|e| e.contains("worker")), "{body}");
}

#[tokio::test]
async fn bad_bodies_are_refused_in_the_api_s_own_json_shape() {
    let f = fixture();
    let (status, ctype, body) = send(&f.app, "POST", "/api/generate", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert_eq!(json_of(&body)["error"], "missing request body");
    // Over the 32 MiB body limit: 413, as JSON (axum's own rejection is plain text).
    let huge = json!({"model": "a", "prompt": "x".repeat(33 << 20)});
    let (status, ctype, body) = send(&f.app, "POST", "/api/generate", Some(huge.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert!(json_of(&body)["error"].is_string(), "{body}");
    let (status, _, body) = send(&f.app, "POST", "/v1/chat/completions", Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json_of(&body)["error"]["message"].is_string(), "OpenAI's shape: {body}");
    assert_eq!(f.fake.loads(), 0);
}

/// Sends a request with extra headers; returns the status, the response headers and the body.
async fn send_with(app: &Router, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app.clone().oneshot(req.body(Body::from(body.to_string())).expect("request")).await.expect("infallible");
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).expect("utf8"))
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_any_work_in_each_apis_shape() {
    let f = fixture();
    let body = r#"{"model": "a", "prompt": "x", "stream": false}"#;
    let evil = [("origin", "http://evil.example"), ("content-type", "text/plain")];
    let (status, _, text) = send_with(&f.app, "POST", "/api/generate", &evil, body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(json_of(&text)["error"].as_str().is_some_and(|e| e.contains("http://evil.example")), "{text}");
    let (status, _, text) = send_with(&f.app, "POST", "/v1/chat/completions", &evil, r#"{"model": "a", "messages": [{"role": "user", "content": "x"}]}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_eq!(json_of(&text)["error"]["type"], "invalid_request_error", "{text}");
    let (status, _, _) = send_with(&f.app, "DELETE", "/api/delete", &evil, r#"{"model": "a"}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A preflight from it gets no CORS answer either.
    let preflight = [("origin", "http://evil.example"), ("access-control-request-method", "POST")];
    let (status, headers, _) = send_with(&f.app, "OPTIONS", "/api/chat", &preflight, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(headers.get("access-control-allow-origin").is_none());
    assert_eq!(f.fake.generations(), 0, "nothing ran for a refused origin");
}

#[tokio::test]
async fn a_loopback_origin_gets_cors_and_a_client_without_origin_is_unaffected() {
    let f = fixture();
    let body = r#"{"model": "a", "prompt": "x", "stream": false, "options": {"num_predict": 2}}"#;
    let (status, headers, text) = send_with(&f.app, "POST", "/api/generate", &[("origin", "http://localhost:5173"), ("content-type", "application/json")], body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("http://localhost:5173"));
    assert!(headers.get("access-control-allow-credentials").is_none());
    let preflight = [("origin", "http://127.0.0.1:3000"), ("access-control-request-method", "POST"), ("access-control-request-headers", "authorization,content-type")];
    let (status, headers, _) = send_with(&f.app, "OPTIONS", "/v1/chat/completions", &preflight, "").await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok()), Some("http://127.0.0.1:3000"));
    assert!(headers.get("access-control-allow-headers").and_then(|v| v.to_str().ok()).is_some_and(|h| h.contains("authorization")));
    // curl's default form content type, no Origin: served as before.
    let (status, _, text) = send_with(&f.app, "POST", "/api/generate", &[("content-type", "application/x-www-form-urlencoded")], body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(f.fake.generations(), 2);
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_on_a_loopback_bind() {
    let f = fixture();
    let (status, _, text) = send_with(&f.app, "GET", "/api/tags", &[("host", "evil.example:11434")], "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(json_of(&text)["error"].as_str().is_some_and(|e| e.contains("evil.example")), "{text}");
    let (status, _, _) = send_with(&f.app, "GET", "/api/tags", &[("host", "localhost:11434")], "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send_with(&f.app, "GET", "/api/version", &[("host", "127.0.0.1:11434")], "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_json_in_the_apis_shape() {
    let f = fixture();
    let (status, ctype, body) = send(&f.app, "GET", "/api/generate", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert!(json_of(&body)["error"].as_str().is_some_and(|e| e.contains("GET")), "{body}");
    let (status, _, body) = send(&f.app, "DELETE", "/v1/chat/completions", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json_of(&body)["error"]["type"], "invalid_request_error", "{body}");
    let (status, _, body) = send(&f.app, "GET", "/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&body)["error"]["message"].is_string(), "{body}");
    let (status, _, body) = send(&f.app, "GET", "/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&body)["error"].is_string(), "{body}");
}

#[tokio::test]
async fn names_that_are_not_models_do_not_become_metric_labels() {
    let f = fixture();
    for i in 0..20 {
        let (status, _, _) = send(&f.app, "POST", "/api/generate", Some(json!({"model": format!("junk-{i}"), "prompt": "x"}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _, _) = send(&f.app, "POST", "/api/generate", Some(json!({"model": "a", "prompt": "x", "stream": false, "options": {"num_predict": 1}}))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, text) = send(&f.app, "GET", "/metrics", None).await;
    assert!(!text.contains("junk-"), "a junk name became a label");
    assert!(text.contains("model=\"unknown\""), "{text}");
    assert!(text.contains("model=\"a\""), "the model that answered keeps its label: {text}");
}

/// A router whose server has two keys: `kg` (generate, 2 requests a minute) and `km`
/// (metrics, admin-less).
fn keyed_fixture() -> Fixture {
    use crate::service::accounts::{key_hash, KeySpec, Limits, Scope};
    let fake = FakeBackend::default();
    let (manager, models) = manager(&fake, limits(1000));
    let service = Service::new(manager, crate::cache::ResponseCache::disabled(), None, Metrics::new(Default::default()), Catalog::default(), ServiceSettings::default());
    let mut state = Parts::new(service);
    let spec = |name: &str, key: &str, scopes: &[Scope], rpm| KeySpec { name: name.into(), sha256: key_hash(key), scopes: scopes.to_vec(), limits: Limits { rpm, ..Default::default() } };
    state.keys = Arc::new(auth::Keys::new(&[spec("gen", "kg", &[Scope::Generate], Some(2)), spec("scraper", "km", &[Scope::Metrics], None)], None));
    Fixture { app: router(state.into()), fake, _models: models }
}

async fn send_key(app: &Router, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Response) {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    (resp.status(), resp)
}

async fn body_json(resp: Response) -> Value {
    json_of(std::str::from_utf8(&resp.into_body().collect().await.expect("body").to_bytes()).expect("utf8"))
}

#[tokio::test]
async fn with_keys_every_route_but_health_needs_one_in_its_apis_shape() {
    let f = keyed_fixture();
    let (s, _) = send_key(&f.app, "GET", "/health", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, resp) = send_key(&f.app, "GET", "/api/tags", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert!(body_json(resp).await["error"].as_str().expect("ollama shape").contains("API key"));
    let (s, resp) = send_key(&f.app, "GET", "/v1/models", Some("wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(resp).await["error"]["code"], "invalid_api_key");
    let (s, resp) = send_key(&f.app, "GET", "/v1/models", Some("kg"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let v = body_json(resp).await;
    assert!(v["error"]["message"].as_str().expect("openai shape").contains("models:read"), "{v}");
    let (s, _) = send_key(&f.app, "GET", "/metrics", Some("km"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send_key(&f.app, "POST", "/api/config/reload", Some("km"), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = send_key(&f.app, "GET", "/api/version", Some("km"), None).await;
    assert_eq!(s, StatusCode::OK, "any valid key reads the version");
    assert_eq!(f.fake.generations(), 0);
}

#[tokio::test]
async fn a_keys_tokens_are_counted_and_its_rate_limit_answers_429() {
    let f = keyed_fixture();
    let generate = json!({"model": "a", "prompt": "x y", "stream": false, "options": {"num_predict": 3}});
    for _ in 0..2 {
        let (s, resp) = send_key(&f.app, "POST", "/api/generate", Some("kg"), Some(generate.clone())).await;
        assert_eq!(s, StatusCode::OK, "{}", body_json(resp).await);
    }
    let (s, resp) = send_key(&f.app, "POST", "/v1/completions", Some("kg"), Some(json!({"model": "a", "prompt": "x"}))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "30");
    assert_eq!(body_json(resp).await["error"]["type"], "rate_limit_error");
    assert_eq!(f.fake.generations(), 2);
    let (s, resp) = send_key(&f.app, "GET", "/api/usage", Some("kg"), None).await;
    assert_eq!(s, StatusCode::OK);
    let v = body_json(resp).await;
    let keys = v["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "a key sees only itself: {v}");
    assert_eq!(keys[0]["name"], "gen");
    assert_eq!(keys[0]["usage"]["requests"], 2);
    assert_eq!(keys[0]["usage"]["limited"], 1);
    assert_eq!(keys[0]["usage"]["prompt_tokens"], 4);
    assert_eq!(keys[0]["usage"]["completion_tokens"], 6);
    assert_eq!(keys[0]["limits"]["requests_left"], 0);
    let (_, resp) = send_key(&f.app, "GET", "/metrics", Some("km"), None).await;
    let text = String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8");
    assert!(text.contains("hearth_key_tokens_total{key=\"gen\",kind=\"completion\"} 6"), "{text}");
    assert!(text.contains("hearth_key_requests_total{key=\"gen\",result=\"limited\"} 1"), "{text}");
}

#[tokio::test]
async fn a_huge_input_is_never_echoed_whole() {
    let f = fixture();
    let huge = "x".repeat(1 << 20);
    for (path, body) in [
        ("/api/generate", json!({"model": huge, "prompt": "hi"})),
        ("/api/chat", json!({"model": "a", "persona": huge, "messages": []})),
        ("/v1/chat/completions", json!({"model": huge, "messages": [{"role": "user", "content": "hi"}]})),
        ("/api/generate", json!({"model": "a", "prompt": "hi", "keep_alive": huge})),
    ] {
        let (status, _, text) = send(&f.app, "POST", path, Some(body)).await;
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(text.len() < 1000, "{path} echoed {} bytes", text.len());
    }
}
