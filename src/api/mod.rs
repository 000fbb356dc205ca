//! HTTP: the axum router for Ollama's API, OpenAI's (`openai`), the service layer's own routes
//! (`layer`: health, metrics, cache, templates, conversations, reload), the routing layer's
//! (`routing`: routes' state, feedback) and the seeds' routes (`seed`). Handlers parse the wire format, call the shared request path (`service`), and
//! write NDJSON, SSE or JSON back. `observe` gives every request an id, a log line and its
//! metrics. The only place with routes.

pub mod anthropic;
pub mod auth;
pub mod embed;
pub mod error;
pub mod extract;
pub mod guard;
pub mod layer;
pub mod lifecycle;
pub mod listen;
pub mod models;
pub mod observe;
pub mod ollama;
pub mod openai;
pub mod routing;
pub mod seed;
pub mod store;
pub mod tokens;
pub mod tools;
pub mod ui;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;

use self::auth::Key;
use self::error::ApiError;
use self::extract::JsonBody;
use self::ollama::{ChatRequest, GenerateRequest, Kind, Reply};
use crate::resources::ModelManager;
use crate::service::{ResponseInfo, Service};

/// Largest request body accepted (a long prompt is a few MB at most).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Shared state of the HTTP server: a handle that every request and every middleware clones, so
/// one reference count (the parts themselves hold dozens of handles, and a path).
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

pub struct Parts {
    pub manager: ModelManager,
    pub service: Service,
    pub lifecycle: Arc<Lifecycle>,
    /// Which browser origins and `Host` names may use the API.
    pub guard: Arc<guard::Guard>,
    /// The API keys; empty means nothing asks for one.
    pub keys: Arc<auth::Keys>,
    /// What `/api/pull` may reach and download.
    pub pull: Arc<crate::store::pull::PullLimits>,
}

impl From<Parts> for AppState {
    fn from(parts: Parts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

pub use self::lifecycle::{Lifecycle, Reloader};

#[cfg(test)]
impl Parts {
    /// State around a service, with no config file to reload (the router's tests).
    pub fn new(service: Service) -> Parts {
        Parts {
            manager: service.manager.clone(),
            service,
            lifecycle: Arc::new(Lifecycle::new(None)),
            guard: Default::default(),
            keys: Default::default(),
            pull: Arc::new(crate::config::file::default_pull_limits()),
        }
    }
}

/// The header that says whether the response cache answered.
pub const CACHE_HEADER: &str = "x-hearth-cache";

/// The header naming the target that answered (a route's, or a provider's model).
pub const TARGET_HEADER: &str = "x-hearth-target";

/// The header naming the route that chose the target.
pub const ROUTE_HEADER: &str = "x-hearth-route";

/// The metrics' model label of a request refused as the client's fault: its model name may be
/// anything (a scanner's junk names must not grow `/metrics`).
pub const UNKNOWN_MODEL: &str = "unknown";

/// Marks a response with the cache result and the model (for the metrics). A 4xx is labelled
/// `unknown`: the name may not be a model.
pub fn mark(resp: &mut Response, model: &str, info: Option<&ResponseInfo>) {
    if let Some(info) = info {
        resp.headers_mut().insert(CACHE_HEADER, header::HeaderValue::from_static(info.cache.as_str()));
        if let Some(served) = &info.served {
            if let Ok(v) = header::HeaderValue::from_str(&served.target) {
                resp.headers_mut().insert(TARGET_HEADER, v);
            }
            if let Some(a) = &served.attribution {
                if let Ok(v) = header::HeaderValue::from_str(&a.route) {
                    resp.headers_mut().insert(ROUTE_HEADER, v);
                }
                // Feedback finds the answer by its request id, known to `observe`.
                let served = served.clone();
                resp.extensions_mut().insert(observe::OnRequestId(Arc::new(move |id: String| {
                    let served = served.clone();
                    Box::pin(async move { served.remember(&id).await })
                })));
            }
        }
    }
    let label = if resp.status().is_client_error() { UNKNOWN_MODEL } else { model };
    resp.extensions_mut().insert(observe::ModelLabel(label.to_string()));
}

pub fn router(state: AppState) -> Router {
    let guard = Arc::clone(&state.guard);
    let authorize = axum::middleware::from_fn_with_state(state.clone(), auth::authorize);
    Router::new()
        .route("/", get(ui::root).head(ui::root))
        .route("/api/version", get(version).head(version))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/api/embed", post(embed::embed))
        .route("/api/embeddings", post(embed::embeddings))
        .route("/api/tags", get(tags).head(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/pull", post(store::pull))
        .route("/api/create", post(store::create))
        .route("/api/copy", post(store::copy))
        .route("/api/delete", delete(store::delete))
        .merge(openai::routes())
        .merge(layer::routes())
        .merge(routing::routes())
        .merge(seed::routes())
        .merge(tokens::routes())
        .merge(anthropic::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Blob uploads are model-sized and streamed to disk: no body limit.
        .route(
            "/api/blobs/{*digest}",
            post(store::post_blob).head(store::head_blob).layer(DefaultBodyLimit::disable()),
        )
        // Outermost last: observe every request, refuse foreign hosts and origins, answer CORS
        // (preflights carry no key), then ask for a key.
        .layer(authorize)
        .layer(guard.cors())
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&guard), guard::guard))
        .layer(axum::middleware::from_fn_with_state(state.service.metrics.clone(), observe::observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets open responses finish.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, max_connections: usize, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    listen::serve(listener, router(state), max_connections, shutdown).await
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": crate::VERSION, "cpu": crate::engine::cpu::report() }))
}

async fn not_found(uri: axum::http::Uri) -> Response {
    in_shape_for(uri.path(), ApiError::not_found("404 page not found"))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let message = format!("method {method} is not allowed on {}", uri.path().chars().take(100).collect::<String>());
    in_shape_for(uri.path(), ApiError { status: StatusCode::METHOD_NOT_ALLOWED, message, retry_after: None })
}

/// An error in the shape of the API the path belongs to: Anthropic's under `/v1/messages`,
/// OpenAI's elsewhere under `/v1/`, else Ollama's.
pub fn in_shape_for(path: &str, error: ApiError) -> Response {
    if anthropic::owns(path) {
        anthropic::AnthropicError(error).into_response()
    } else if path.starts_with("/v1/") {
        openai::OpenAiError::from(error).into_response()
    } else {
        error.into_response()
    }
}

async fn generate(State(app): State<AppState>, Key(account, sticky): Key, JsonBody(req): JsonBody<GenerateRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut req = req.validate()?;
    req.service.account = account;
    req.service.sticky = sticky.or(req.service.sticky);
    Ok(respond(&app, req, Kind::Generate, started).await)
}

async fn chat(State(app): State<AppState>, Key(account, sticky): Key, JsonBody(req): JsonBody<ChatRequest>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut req = req.validate()?;
    req.service.account = account;
    req.service.sticky = sticky.or(req.service.sticky);
    Ok(respond(&app, req, Kind::Chat, started).await)
}

async fn respond(app: &AppState, req: crate::service::ValidRequest, kind: Kind, started: Instant) -> Response {
    let model = req.model.clone();
    match ollama::run(&app.service, req, kind, crate::service::Caller::Network, started).await {
        Ok(Reply::One(v, info)) => {
            let mut resp = Json(v).into_response();
            mark(&mut resp, &model, info.as_ref());
            resp
        }
        Ok(Reply::Stream(g, tools)) => {
            let info = g.info.clone();
            let lines = ollama::response_stream(g, kind, model.clone(), tools).map(|v| {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(line))
            });
            let lines = app.lifecycle.until_shutdown(lines, Ok(shutdown_line()));
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(lines),
            )
                .into_response();
            mark(&mut resp, &model, Some(&info));
            resp
        }
        Err(e) => {
            let mut resp = e.into_response();
            mark(&mut resp, &model, None);
            resp
        }
    }
}

/// The last line of an NDJSON stream cut by a shutdown.
pub fn shutdown_line() -> Bytes {
    Bytes::from_static(b"{\"error\":\"the server is shutting down; this answer is incomplete\"}\n")
}

async fn tags(State(app): State<AppState>) -> Response {
    let store = app.manager.store().clone();
    match tokio::task::spawn_blocking(move || models::tags(&store)).await {
        Ok(Ok(mut v)) => {
            if let Some(list) = v["models"].as_array_mut() {
                list.extend(models::routed_tags(&app.service.router.table()));
            }
            Json(v).into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(format!("listing failed: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
struct ShowRequest {
    model: Option<String>,
    /// Older clients send `name`.
    name: Option<String>,
    #[serde(default)]
    verbose: bool,
}

async fn show(State(app): State<AppState>, JsonBody(req): JsonBody<ShowRequest>) -> Result<Json<serde_json::Value>, ApiError> {
    let name = req.model.or(req.name).filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("model is required"))?;
    if let Some(v) = models::show_routed(&app.service.router.table(), &name) {
        return Ok(Json(v));
    }
    let manager = app.manager.clone();
    let v = tokio::task::spawn_blocking(move || {
        let entry = manager.store().resolve(&name)?;
        models::show(manager.store(), &entry, req.verbose, manager.defaults())
    })
    .await
    .map_err(|e| ApiError::internal(format!("show failed: {e}")))??;
    Ok(Json(v))
}

async fn ps(State(app): State<AppState>) -> Response {
    let manager = app.manager.clone();
    match tokio::task::spawn_blocking(move || models::ps(&manager)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => ApiError::internal(format!("ps failed: {e}")).into_response(),
    }
}
