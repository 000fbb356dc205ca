//! OpenAI's wire format: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//! `/v1/models/{id}`, `/v1/embeddings` and `/v1/responses` (`responses`: stored responses
//! continue with `previous_response_id`), over the same request path as Ollama's API.
//!
//! Requests become `ValidRequest`s (one per choice: `n` choices run as parallel sequences);
//! answers are OpenAI's objects, streamed as server-sent events ending in `data: [DONE]`.
//! Unset sampling fields keep Ollama's defaults, as Ollama's own OpenAI layer does; `num_ctx`
//! and `keep_alive` are accepted as extra fields. Errors use OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`.

mod chat;
mod completions;
mod embeddings;
mod models;
mod request;
mod responses;
mod responses_stream;
#[cfg(test)]
mod tests;

use chat::*;
use completions::*;
use embeddings::*;
use models::*;
use request::*;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Key;
use super::error::ApiError;
use super::extract::{JsonBody, PathParam};
use super::ollama::logprob_request;
use super::tools::{format_grammar, parse_tools, tool_choice};
use super::AppState;
use crate::engine::grammar::{ToolChoice, ToolRequest};
use crate::spec::options::OptionPatch;
use crate::spec::template::TemplateMessage;
use crate::engine::{DoneReason, TokenLogprob};
use crate::resources::KeepAlive;
use crate::service::reply::{self, Collected, Piece};
use crate::service::{self, Caller, Generation, Outcome, PromptSpec, ValidRequest};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::get_response).delete(responses::delete_response))
}

/// An error in OpenAI's shape, naming the request field at fault when there is one.
pub struct OpenAiError {
    pub error: ApiError,
    pub param: Option<&'static str>,
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        OpenAiError { error, param: None }
    }
}

impl<E: Into<ApiError>> From<(E, &'static str)> for OpenAiError {
    fn from((e, param): (E, &'static str)) -> Self {
        OpenAiError { error: e.into(), param: Some(param) }
    }
}

fn invalid(param: &'static str, message: impl Into<String>) -> OpenAiError {
    OpenAiError { error: ApiError::bad_request(message), param: Some(param) }
}

impl OpenAiError {
    fn body(&self) -> Value {
        let status = self.error.status;
        let (kind, code) = match status {
            // A stored response that isn't there names its id field, or none (a path).
            StatusCode::NOT_FOUND if self.param.is_none_or(|p| p.ends_with("response_id")) && self.error.message.contains("response ") => ("invalid_request_error", Some("response_not_found")),
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            StatusCode::UNAUTHORIZED => ("invalid_request_error", Some("invalid_api_key")),
            StatusCode::FORBIDDEN => ("invalid_request_error", Some("insufficient_permissions")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            s if s.is_client_error() => ("invalid_request_error", None),
            StatusCode::SERVICE_UNAVAILABLE => ("server_error", Some("server_busy")),
            StatusCode::INSUFFICIENT_STORAGE => ("server_error", Some("insufficient_memory")),
            _ => ("server_error", None),
        };
        json!({ "error": { "message": self.error.shown(), "type": kind, "param": self.param, "code": code } })
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = self.error.into_response();
        // Same status and headers as the Ollama error; OpenAI's body.
        *resp.body_mut() = axum::body::Body::from(body.to_string());
        resp
    }
}

type OaiResult<T> = Result<T, OpenAiError>;

/// A JSON body parsed as `T`, or a rejection in OpenAI's error shape.
pub struct OpenAiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for OpenAiJson<T> {
    type Rejection = OpenAiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, OpenAiError> {
        let JsonBody(value) = JsonBody::from_request(req, state).await?;
        Ok(OpenAiJson(value))
    }
}

/// A failure of the request path, naming `model` for a 404 and `client_param` for other
/// client errors.
fn service_error(e: service::ServiceError, client_param: Option<&'static str>) -> OpenAiError {
    let error = ApiError::from(e);
    let param = match error.status {
        StatusCode::NOT_FOUND => Some("model"),
        s if s.is_client_error() => client_param,
        _ => None,
    };
    OpenAiError { error, param }
}

/// `keep_alive`, as Ollama takes it.
fn keep_alive(v: Option<&Value>) -> OaiResult<Option<KeepAlive>> {
    v.filter(|v| !v.is_null()).map(KeepAlive::from_json).transpose().map_err(|e| invalid("keep_alive", e))
}

// ---------------------------------------------------------------- running choices

pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A response id: a prefix and 24 hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let a = h.finish();
    h.write_u64(a);
    format!("{prefix}-{a:016x}{:08x}", h.finish() as u32)
}

pub(super) fn fingerprint() -> String {
    format!("hearth-{}", crate::VERSION)
}

/// Starts one generation per choice. With a seed, choice `i` uses `seed + i`, so the choices
/// differ and each repeats.
pub(super) async fn start_choices(app: &AppState, req: ValidRequest, n: usize, started: Instant) -> OaiResult<Vec<Generation>> {
    let mut generations = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = req.clone();
        // A negative seed is a fresh one per choice already.
        if let Some(seed) = r.options.seed.filter(|s| *s >= 0) {
            r.options.seed = Some(seed % (1 << 32) + i as i64);
        }
        let outcome = app
            .service
            .start(r, Caller::Network, started)
            .await
            .map_err(|e| service_error(e, None))?;
        match outcome {
            Outcome::Generating(g) => generations.push(g),
            Outcome::Loaded { .. } => return Err(invalid("messages", "nothing to complete")),
        }
    }
    Ok(generations)
}

/// A finished choice.
/// A whole choice, read once (`service::reply`); text completions offer no tools.
pub(super) async fn finish(g: Generation, tools: Option<ToolRequest>) -> Result<Collected, ApiError> {
    Ok(reply::collect(g.events, tools).await?)
}

pub(super) fn finish_reason(reason: DoneReason) -> &'static str {
    match reason {
        DoneReason::Stop => "stop",
        DoneReason::Length => "length",
    }
}

pub(super) fn usage(prompt: u32, completion: u32) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// Chat `logprobs.content`: the same entries Ollama's API sends.
pub(super) fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    json!({ "content": lps.iter().map(super::ollama::logprob_json).collect::<Vec<_>>() })
}

pub(super) fn tool_call_json(name: &str, args: &Value) -> Value {
    json!({ "id": new_id("call"), "type": "function", "function": { "name": name, "arguments": args.to_string() } })
}

/// Server-sent events, ending with `[DONE]`; cut at shutdown with an error event.
pub(super) fn sse_response(app: &AppState, events: impl Stream<Item = Value> + Send + 'static) -> Response {
    let cut = OpenAiError::from(ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: "the server is shutting down; this answer is incomplete".into(), retry_after: None }).body();
    let data = app
        .lifecycle
        .until_shutdown(events, cut)
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures::stream::once(async { Ok(SseEvent::default().data("[DONE]")) }));
    Sse::new(data).into_response()
}
