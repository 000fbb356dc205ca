//! Request observation: the middleware that gives every request an id, runs its handler inside a
//! `request` tracing span carrying that id, logs one line when the response headers are ready,
//! and records the request in `Metrics`.
//!
//! It owns the `X-Request-Id` header and the three small extension types handlers use to talk to
//! it (`RequestId` on the way in, `ModelLabel` and `ErrorKind` on the way out). It must not read
//! or log bodies or prompts, and must not label metrics with anything unbounded: the route is the
//! matched pattern, never the raw path.
//!
//! Install it last on the full router, so that it wraps every route and the fallback:
//!
//! ```ignore
//! router.layer(axum::middleware::from_fn_with_state(metrics.clone(), observe::observe))
//! ```
//!
//! A streamed body outlives this middleware: lines logged by a task spawned for it carry the id
//! only if the task is spawned with `.instrument(tracing::Span::current())`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::Metrics;

pub static REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of a request no route matched (the fallback): one value for every unknown
/// path, so a scanner cannot grow the metrics.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The request's id, in the request's extensions for handlers that want to log or return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The model a response was about, set by handlers in the response's extensions (for example
/// `(Extension(ModelLabel(name)), body)`) so the request metrics carry it. Absent: "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLabel(pub String);

/// The error kind of a failed response, set by whoever builds the error response when the status
/// alone says too little (e.g. "load_failed" for a 422). Absent: derived from the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind(pub &'static str);

/// Something a handler wants done with the request's id once it is known (a route's answer
/// remembered for feedback), set in the response's extensions. The response waits for it, so
/// what it stores is stored before the client has the id.
#[derive(Clone)]
pub struct OnRequestId(pub std::sync::Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, ()> + Send + Sync>);

/// The middleware; see the module documentation for how to install it.
pub async fn observe(State(metrics): State<Metrics>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, MatchedPath::as_str).to_owned();
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(id.clone()));

    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let latency = started.elapsed();

    let status = resp.status();
    let model = resp.extensions().get::<ModelLabel>().map(|m| m.0.clone()).unwrap_or_default();
    metrics.record_request(&route, &model, status.as_u16(), latency);
    if status.is_client_error() || status.is_server_error() {
        let kind = resp.extensions().get::<ErrorKind>().map_or_else(|| error_kind(status), |k| k.0);
        metrics.record_error(kind);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER.clone(), value);
    }
    if let Some(OnRequestId(f)) = resp.extensions_mut().remove::<OnRequestId>() {
        f(id.clone()).await;
    }

    // One access line per request: at info for errors, at debug for the rest (a generation
    // logs its own info line when it ends; at 2k cache hits a second, a second line per request
    // cost 0.1 ms of p99 latency).
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let status_code = status.as_u16();
    span.in_scope(|| match (status.is_server_error(), status.is_client_error()) {
        (true, _) => tracing::warn!(%method, %route, status = status_code, latency_ms, %model, "request"),
        (_, true) => tracing::info!(%method, %route, status = status_code, latency_ms, %model, "request"),
        _ => tracing::debug!(%method, %route, status = status_code, latency_ms, %model, "request"),
    });
    resp
}

/// A client's id is kept only if it is 1–128 visible ASCII characters: it goes into logs and a
/// response header, so nothing that could forge a log line or break a header gets through.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The error kind of a failed status when the response named none. Every status maps into a
/// fixed set, so the `kind` label stays bounded.
pub fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 | 504 => "timeout",
        413 => "too_large",
        422 => "unprocessable",
        429 | 503 => "busy",
        507 => "insufficient_storage",
        502 => "upstream",
        _ if status.is_client_error() => "client_error",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_short_visible_ascii() {
        assert!(is_valid_request_id("a"));
        assert!(is_valid_request_id("req-123_ABC.x:y/z"));
        assert!(is_valid_request_id("!~"));
        assert!(is_valid_request_id(&"x".repeat(128)));

        assert!(!is_valid_request_id(""));
        assert!(!is_valid_request_id(&"x".repeat(129)));
        assert!(!is_valid_request_id("has space"));
        assert!(!is_valid_request_id("line\nbreak"));
        assert!(!is_valid_request_id("tab\t"));
        assert!(!is_valid_request_id("del\x7f"));
        assert!(!is_valid_request_id("é"));
    }

    #[test]
    fn statuses_map_to_bounded_error_kinds() {
        let cases = [
            (400, "bad_request"),
            (403, "forbidden"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (408, "timeout"),
            (413, "too_large"),
            (415, "client_error"),
            (422, "unprocessable"),
            (429, "busy"),
            (500, "internal"),
            (502, "upstream"),
            (503, "busy"),
            (504, "timeout"),
            (507, "insufficient_storage"),
            (599, "internal"),
        ];
        for (code, kind) in cases {
            let status = StatusCode::from_u16(code).expect("valid status code");
            assert_eq!(error_kind(status), kind, "status {code}");
        }
    }

    /// Drives the layer over real HTTP (the crate has no `tower` dependency for `oneshot`).
    #[tokio::test]
    async fn layer_sets_ids_and_records_matched_routes() {
        use axum::routing::get;
        use axum::{Extension, Router};

        async fn item(Extension(RequestId(id)): Extension<RequestId>) -> (Extension<ModelLabel>, String) {
            (Extension(ModelLabel("tiny:1b".to_owned())), id)
        }
        async fn overloaded() -> (StatusCode, Extension<ErrorKind>) {
            (StatusCode::SERVICE_UNAVAILABLE, Extension(ErrorKind("load_failed")))
        }

        let metrics = Metrics::new(crate::metrics::Pricing::default());
        let app = Router::new()
            .route("/items/{id}", get(item))
            .route("/overloaded", get(overloaded))
            .layer(axum::middleware::from_fn_with_state(metrics.clone(), observe));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();

        let resp = client.get(format!("http://{addr}/items/7")).header("x-request-id", "client-id-1").send().await.expect("request");
        assert_eq!(resp.headers()["x-request-id"], "client-id-1");
        assert_eq!(resp.text().await.expect("body"), "client-id-1", "the handler sees the same id");

        let resp = client.get(format!("http://{addr}/items/8")).header("x-request-id", "bad id").send().await.expect("request");
        let fresh = resp.headers()["x-request-id"].to_str().expect("ascii id").to_owned();
        assert!(uuid::Uuid::parse_str(&fresh).is_ok(), "an invalid client id is replaced by a uuid: {fresh}");
        assert_eq!(resp.text().await.expect("body"), fresh);

        let resp = client.get(format!("http://{addr}/no/such/path")).send().await.expect("request");
        assert_eq!(resp.status(), 404);
        assert!(resp.headers().contains_key("x-request-id"));
        let resp = client.get(format!("http://{addr}/overloaded")).send().await.expect("request");
        assert_eq!(resp.status(), 503);
        server.abort();

        let text = metrics.render_prometheus(&crate::metrics::Snapshot::default());
        let has = |needle: &str| text.lines().any(|l| l.starts_with("hearth_") && l.contains(needle));
        assert!(has(r#"model="tiny:1b",route="/items/{id}",status="200"} 2"#), "{text}");
        assert!(has(r#"model="none",route="unmatched",status="404"} 1"#), "{text}");
        assert!(has(r#"hearth_errors_total{kind="not_found"} 1"#), "{text}");
        assert!(has(r#"hearth_errors_total{kind="load_failed"} 1"#), "{text}");
        assert!(!text.contains("/items/7") && !text.contains("/no/such/path"), "raw paths never become labels");
    }
}
