//! OpenAI's wire format: `/v1/chat/completions`, `/v1/completions`, `/v1/models`,
//! `/v1/models/{id}` and `/v1/embeddings`, over the same request path as Ollama's API.
//!
//! Requests become `ValidRequest`s (one per choice: `n` choices run as parallel sequences);
//! answers are OpenAI's objects, streamed as server-sent events ending in `data: [DONE]`.
//! Unset sampling fields keep Ollama's defaults, as Ollama's own OpenAI layer does; `num_ctx`
//! and `keep_alive` are accepted as extra fields. Errors use OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::extract::JsonBody;
use super::ollama::logprob_request;
use super::tools::{format_grammar, parse_tools, tool_choice};
use super::AppState;
use crate::engine::grammar::{ToolChoice, ToolRequest};
use crate::engine::options::RawOptions;
use crate::engine::template::TemplateMessage;
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
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("model_not_found")),
            s if s.is_client_error() => ("invalid_request_error", None),
            StatusCode::SERVICE_UNAVAILABLE => ("server_error", Some("server_busy")),
            StatusCode::INSUFFICIENT_STORAGE => ("server_error", Some("insufficient_memory")),
            _ => ("server_error", None),
        };
        json!({ "error": { "message": self.error.message, "type": kind, "param": self.param, "code": code } })
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

// ---------------------------------------------------------------- requests

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
struct Sampling {
    model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<Value>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logit_bias: Option<Value>,
    #[allow(dead_code)] // accepted, as OpenAI's API does; hearth keeps no per-user state.
    user: Option<String>,
    // Extras: what Ollama and llama-server users send.
    num_ctx: Option<i64>,
    keep_alive: Option<Value>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    /// hearth's own: a prompt template's name, with `variables`.
    template: Option<String>,
    #[serde(flatten)]
    service: super::ollama::ServiceFields,
}

#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    #[serde(flatten)]
    sampling: Sampling,
    messages: Option<Vec<OaiMessage>>,
    response_format: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct OaiMessage {
    role: String,
    #[serde(default)]
    content: Value,
    tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(flatten)]
    sampling: Sampling,
    prompt: Option<Value>,
    suffix: Option<String>,
    echo: Option<bool>,
    logprobs: Option<i64>,
}

/// Most choices one request may ask for.
const MAX_N: i64 = 16;

/// What every choice of a request shares.
struct Plan {
    model: String,
    options: crate::engine::options::SamplingOptions,
    raw_options: RawOptions,
    keep_alive: Option<KeepAlive>,
    n: usize,
    stream: bool,
    include_usage: bool,
    service: crate::service::ServiceOptions,
}

impl Sampling {
    fn plan(&self, default_num_ctx: u32) -> OaiResult<Plan> {
        let service = self.service.clone().validate(self.template.clone()).map_err(|e| OpenAiError { error: e, param: None })?;
        let model = self
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| service.persona.clone())
            .ok_or_else(|| invalid("model", "model is required"))?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(invalid("n", format!("n must be between 1 and {MAX_N}, not {n}")));
        }
        if n > 1 && service.conversation_id.is_some() {
            return Err(invalid("n", "a conversation continues with one answer: n must be 1 with conversation_id"));
        }
        if self.logit_bias.as_ref().is_some_and(|b| b.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(invalid("logit_bias", "logit_bias is not supported"));
        }
        let mut o = Map::new();
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if let Some(m) = max_tokens {
            if m < 1 {
                return Err(invalid("max_tokens", format!("max_tokens must be at least 1, not {m}")));
            }
            o.insert("num_predict".into(), json!(m));
        }
        let mut range = |name: &'static str, key: &str, v: Option<f64>, lo: f64, hi: f64| -> OaiResult<()> {
            if let Some(v) = v {
                if !(lo..=hi).contains(&v) {
                    return Err(invalid(name, format!("{name} must be between {lo} and {hi}, not {v}")));
                }
                o.insert(key.into(), json!(v));
            }
            Ok(())
        };
        range("temperature", "temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", "top_p", self.top_p, 0.0, 1.0)?;
        range("frequency_penalty", "frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("presence_penalty", "presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("min_p", "min_p", self.min_p, 0.0, 1.0)?;
        range("repeat_penalty", "repeat_penalty", self.repeat_penalty, 0.0, 10.0)?;
        if let Some(s) = self.seed {
            o.insert("seed".into(), json!(s));
        }
        if let Some(k) = self.top_k {
            o.insert("top_k".into(), json!(k));
        }
        if let Some(c) = self.num_ctx {
            o.insert("num_ctx".into(), json!(c));
        }
        match &self.stop {
            None | Some(Value::Null) => {}
            Some(s @ (Value::String(_) | Value::Array(_))) => {
                o.insert("stop".into(), s.clone());
            }
            Some(_) => return Err(invalid("stop", "stop must be a string or a list of strings")),
        }
        let raw_options = RawOptions::from_json(&Value::Object(o)).map_err(|e| invalid("options", e.to_string()))?;
        let options = raw_options.validate(default_num_ctx).map_err(|e| invalid("options", e.to_string()))?;
        let keep_alive = keep_alive(self.keep_alive.as_ref())?;
        Ok(Plan {
            model,
            options,
            raw_options,
            keep_alive,
            n: n as usize,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.as_ref().is_some_and(|s| s.include_usage),
            service,
        })
    }
}

/// A message's text: a string, or the text parts of a list.
fn message_text(content: &Value, i: usize) -> OaiResult<String> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(kind) => return Err(invalid("messages", format!("messages[{i}]: content parts of type {kind:?} are not supported (only text)"))),
                    None => return Err(invalid("messages", format!("messages[{i}]: a content part needs a type"))),
                }
            }
            Ok(text)
        }
        _ => Err(invalid("messages", format!("messages[{i}]: content must be a string or a list of parts"))),
    }
}

impl ChatCompletionRequest {
    fn validate(self, default_num_ctx: u32) -> OaiResult<(Plan, ValidRequest)> {
        let mut plan = self.sampling.plan(default_num_ctx)?;
        let messages = self.messages.ok_or_else(|| invalid("messages", "messages is required"))?;
        if messages.is_empty() {
            return Err(invalid("messages", "messages must not be empty"));
        }
        let mut out = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                "developer" => "system".to_string(),
                "system" | "user" | "assistant" | "tool" => m.role.clone(),
                other => return Err(invalid("messages", format!("messages[{i}]: invalid role {other:?}: use system, developer, user, assistant or tool"))),
            };
            let mut content = message_text(&m.content, i)?;
            if content.is_empty() {
                // An earlier call is shown to the model as the JSON it wrote.
                if let Some(f) = m.tool_calls.as_ref().and_then(|c| c.first()).and_then(|c| c.get("function")) {
                    let args = f.get("arguments").and_then(Value::as_str).and_then(|a| serde_json::from_str::<Value>(a).ok()).unwrap_or(json!({}));
                    content = json!({ "name": f.get("name"), "arguments": args }).to_string();
                }
            }
            out.push(TemplateMessage { role, content });
        }
        let format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(rf) => match rf.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(json!("json")),
                Some("json_schema") => {
                    let schema = rf
                        .get("json_schema")
                        .and_then(|s| s.get("schema"))
                        .ok_or_else(|| invalid("response_format", "response_format.json_schema.schema is required"))?;
                    Some(schema.clone())
                }
                _ => return Err(invalid("response_format", "response_format.type must be text, json_object or json_schema")),
            },
        };
        plan.options.grammar = format_grammar(format.as_ref()).map_err(|e| OpenAiError { error: e, param: Some("response_format") })?;
        plan.options.logprobs = logprob_request(self.logprobs, self.top_logprobs).map_err(|e| OpenAiError { error: e, param: Some("top_logprobs") })?;
        if self.top_logprobs.is_some() && self.logprobs != Some(true) {
            return Err(invalid("top_logprobs", "top_logprobs needs logprobs: true"));
        }
        let choice = tool_choice(self.tool_choice.as_ref()).map_err(|e| OpenAiError { error: e, param: Some("tool_choice") })?;
        let tools = match self.tools.filter(|t| !t.is_empty()) {
            None if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) => {
                return Err(invalid("tool_choice", "tool_choice needs tools"));
            }
            None => None,
            Some(_) if plan.options.grammar.is_some() => {
                return Err(invalid("response_format", "response_format and tools can't be combined: a tool call is already JSON"));
            }
            Some(t) => {
                let tools = ToolRequest { tools: parse_tools(&t).map_err(|e| OpenAiError { error: e, param: Some("tools") })?, choice };
                plan.options.grammar = tools.grammar().map_err(|e| OpenAiError { error: e.into(), param: Some("tool_choice") })?;
                Some(tools)
            }
        };
        let req = ValidRequest {
            model: plan.model.clone(),
            prompt: PromptSpec::Chat { messages: out, tools: tools.as_ref().map(ToolRequest::offered).unwrap_or_default() },
            tools,
            options: plan.options.clone(),
            raw_options: plan.raw_options.clone(),
            keep_alive: plan.keep_alive,
            stream: plan.stream,
            service: plan.service.clone(),
        };
        Ok((plan, req))
    }
}

// ---------------------------------------------------------------- running choices

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A response id: a prefix and 24 hex digits.
fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let a = h.finish();
    h.write_u64(a);
    format!("{prefix}-{a:016x}{:08x}", h.finish() as u32)
}

fn fingerprint() -> String {
    format!("hearth-{}", crate::VERSION)
}

/// Starts one generation per choice. With a seed, choice `i` uses `seed + i`, so the choices
/// differ and each repeats.
async fn start_choices(app: &AppState, req: ValidRequest, n: usize, started: Instant) -> OaiResult<Vec<Generation>> {
    let mut generations = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = req.clone();
        if let Some(seed) = r.options.seed {
            r.options.seed = Some(seed.wrapping_add(i as u32));
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
async fn finish(g: Generation, tools: Option<ToolRequest>) -> Result<Collected, ApiError> {
    Ok(reply::collect(g.events, tools).await?)
}

fn finish_reason(reason: DoneReason) -> &'static str {
    match reason {
        DoneReason::Stop => "stop",
        DoneReason::Length => "length",
    }
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// Chat `logprobs.content`: the same entries Ollama's API sends.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    json!({ "content": lps.iter().map(super::ollama::logprob_json).collect::<Vec<_>>() })
}

fn tool_call_json(name: &str, args: &Value) -> Value {
    json!({ "id": new_id("call"), "type": "function", "function": { "name": name, "arguments": args.to_string() } })
}

fn sse_response(events: impl Stream<Item = Value> + Send + 'static) -> Response {
    let data = events
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures::stream::once(async { Ok(SseEvent::default().data("[DONE]")) }));
    Sse::new(data).into_response()
}

// ---------------------------------------------------------------- /v1/chat/completions

async fn chat_completions(State(app): State<AppState>, OpenAiJson(req): OpenAiJson<ChatCompletionRequest>) -> OaiResult<Response> {
    let started = Instant::now();
    let (plan, req) = req.validate(app.manager.defaults().num_ctx)?;
    let tools = req.tools.clone();
    let generations = start_choices(&app, req, plan.n, started).await?;
    let info = combined_info(&generations);
    let id = new_id("chatcmpl");
    let created = unix_now();
    let model = plan.model.clone();
    if plan.stream {
        let mut resp = chat_stream(generations, id, created, model.clone(), tools, plan.include_usage);
        super::mark(&mut resp, &model, Some(&info));
        return Ok(resp);
    }
    let results = futures::future::join_all(generations.into_iter().map(|g| finish(g, tools.clone()))).await;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens, mut cached_tokens) = (0, 0, 0);
    for (index, r) in results.into_iter().enumerate() {
        let f = r?;
        prompt_tokens = f.completion.prompt_tokens;
        cached_tokens = cached_tokens.max(f.completion.cached_tokens);
        completion_tokens += f.completion.eval_tokens;
        let (message, reason) = match f.tool_call {
            Some((name, args)) => (json!({ "role": "assistant", "content": null, "tool_calls": [tool_call_json(&name, &args)] }), "tool_calls"),
            None => (json!({ "role": "assistant", "content": f.text }), finish_reason(f.completion.reason)),
        };
        let logprobs = if f.logprobs.is_empty() { Value::Null } else { chat_logprobs(&f.logprobs) };
        choices.push(json!({ "index": index, "message": message, "logprobs": logprobs, "finish_reason": reason }));
    }
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    });
    // Prompt tokens whose KV was reused from an earlier turn (prefix reuse).
    body["usage"]["prompt_tokens_details"] = json!({ "cached_tokens": cached_tokens });
    super::ollama::annotate(&mut body, &info);
    let mut resp = Json(body).into_response();
    super::mark(&mut resp, &model, Some(&info));
    Ok(resp)
}

/// The service layer's report for all choices: a hit only if every choice hit.
fn combined_info(generations: &[Generation]) -> crate::service::ResponseInfo {
    let mut info = generations.first().map(|g| g.info.clone()).unwrap_or_default();
    if generations.iter().any(|g| g.info.cache != crate::service::CacheResult::Hit) {
        info.cache = crate::service::CacheResult::Miss;
    }
    info
}

/// Token counts gathered from every choice of a streamed response.
#[derive(Default)]
struct UsageTally {
    prompt: u32,
    completion: u32,
}

fn chat_stream(generations: Vec<Generation>, id: String, created: u64, model: String, tools: Option<ToolRequest>, include_usage: bool) -> Response {
    let tally = Arc::new(Mutex::new(UsageTally::default()));
    let chunk = {
        let (id, model) = (id.clone(), model.clone());
        move |choices: Value| {
            json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": fingerprint(), "choices": choices })
        }
    };
    let per_choice = generations.into_iter().enumerate().map(|(index, g)| {
        let chunk = chunk.clone();
        let tools = tools.clone();
        let tally = Arc::clone(&tally);
        // The finish reason is "tool_calls" once a call was given.
        let mut called = false;
        choice_events(g, tools)
            .flat_map(move |ev| {
                let delta = |d: Value, lp: Value, reason: Value| chunk(json!([{ "index": index, "delta": d, "logprobs": lp, "finish_reason": reason }]));
                let out: Vec<Value> = match ev {
                    ChoiceEvent::Start => vec![delta(json!({ "role": "assistant", "content": "" }), Value::Null, Value::Null)],
                    ChoiceEvent::Piece(Piece::Text { text, logprobs }) => {
                        let lp = if logprobs.is_empty() { Value::Null } else { chat_logprobs(&logprobs) };
                        vec![delta(json!({ "content": text }), lp, Value::Null)]
                    }
                    ChoiceEvent::Piece(Piece::ToolCall { name, arguments, .. }) => {
                        called = true;
                        let mut call = tool_call_json(&name, &arguments);
                        call["index"] = json!(0);
                        vec![delta(json!({ "tool_calls": [call] }), Value::Null, Value::Null)]
                    }
                    ChoiceEvent::Piece(Piece::Done(completion)) => {
                        if let Ok(mut t) = tally.lock() {
                            t.prompt = completion.prompt_tokens;
                            t.completion += completion.eval_tokens;
                        }
                        let reason = if called { "tool_calls" } else { finish_reason(completion.reason) };
                        vec![delta(json!({}), Value::Null, json!(reason))]
                    }
                    ChoiceEvent::Piece(Piece::Failed(e)) => vec![OpenAiError::from(ApiError::from(e)).body()],
                };
                futures::stream::iter(out)
            })
            .boxed()
    });
    let merged = futures::stream::select_all(per_choice);
    let usage_chunk = move |usage: Value| {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": fingerprint(), "choices": [], "usage": usage })
    };
    sse_response(merged.chain(usage_tail(tally, include_usage, usage_chunk)))
}

/// The last chunk of a stream that asked for `stream_options.include_usage`: the tokens of
/// every choice, counted once they have all finished.
fn usage_tail(tally: Arc<Mutex<UsageTally>>, include_usage: bool, chunk: impl FnOnce(Value) -> Value + Send + 'static) -> impl Stream<Item = Value> + Send {
    futures::stream::once(async move {
        let t = tally.lock().map(|t| (t.prompt, t.completion)).unwrap_or((0, 0));
        include_usage.then(|| chunk(usage(t.0, t.1)))
    })
    .filter_map(|v| async move { v })
}

/// What one streamed choice produces: a start (the role chunk), then its pieces.
enum ChoiceEvent {
    Start,
    Piece(Piece),
}

fn choice_events(g: Generation, tools: Option<ToolRequest>) -> impl Stream<Item = ChoiceEvent> + Send {
    futures::stream::once(async { ChoiceEvent::Start }).chain(reply::pieces(g.events, tools).map(ChoiceEvent::Piece))
}

// ---------------------------------------------------------------- /v1/completions

async fn completions(State(app): State<AppState>, OpenAiJson(req): OpenAiJson<CompletionRequest>) -> OaiResult<Response> {
    let started = Instant::now();
    let mut plan = req.sampling.plan(app.manager.defaults().num_ctx)?;
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(invalid("suffix", "suffix (insertion) is not supported"));
    }
    let prompts: Vec<String> = match req.prompt {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(String::from).collect()
        }
        Some(Value::Array(items)) if !items.is_empty() => return Err(invalid("prompt", "token-id prompts are not supported; send text")),
        _ => return Err(invalid("prompt", "prompt must be a string or a list of strings")),
    };
    let top = match req.logprobs {
        None => None,
        Some(n) if (0..=5).contains(&n) => Some(n as u8),
        Some(n) => return Err(invalid("logprobs", format!("logprobs must be between 0 and 5, not {n}"))),
    };
    plan.options.logprobs = top;
    let echo = req.echo.unwrap_or(false);
    let mut generations = Vec::new();
    for p in &prompts {
        let valid = ValidRequest {
            model: plan.model.clone(),
            prompt: PromptSpec::Generate { prompt: p.clone(), system: None, template: None, raw: true, context: Vec::new() },
            tools: None,
            options: plan.options.clone(),
            raw_options: plan.raw_options.clone(),
            keep_alive: plan.keep_alive,
            stream: plan.stream,
            service: plan.service.clone(),
        };
        generations.extend(start_choices(&app, valid, plan.n, started).await?);
    }
    let info = combined_info(&generations);
    let id = new_id("cmpl");
    let created = unix_now();
    let model = plan.model.clone();
    let n = plan.n;
    if plan.stream {
        let tally = Arc::new(Mutex::new(UsageTally::default()));
        let per_choice = generations.into_iter().enumerate().map(|(index, g)| {
            let (id, model, tally) = (id.clone(), model.clone(), Arc::clone(&tally));
            let lead = if echo { prompts[index / n].clone() } else { String::new() };
            let chunk = move |text: String, lp: Value, reason: Value| {
                json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                        "system_fingerprint": fingerprint(),
                        "choices": [{ "index": index, "text": text, "logprobs": lp, "finish_reason": reason }] })
            };
            choice_events(g, None)
                .flat_map(move |ev| {
                    let out = match ev {
                        ChoiceEvent::Start if lead.is_empty() => vec![],
                        ChoiceEvent::Start => vec![chunk(lead.clone(), Value::Null, Value::Null)],
                        ChoiceEvent::Piece(Piece::Text { text, logprobs }) => {
                            let lp = if logprobs.is_empty() { Value::Null } else { text_logprobs(&logprobs, 0) };
                            vec![chunk(text, lp, Value::Null)]
                        }
                        // No tools are offered here.
                        ChoiceEvent::Piece(Piece::ToolCall { .. }) => vec![],
                        ChoiceEvent::Piece(Piece::Done(completion)) => {
                            if let Ok(mut t) = tally.lock() {
                                t.prompt += completion.prompt_tokens;
                                t.completion += completion.eval_tokens;
                            }
                            vec![chunk(String::new(), Value::Null, json!(finish_reason(completion.reason)))]
                        }
                        ChoiceEvent::Piece(Piece::Failed(e)) => vec![OpenAiError::from(ApiError::from(e)).body()],
                    };
                    futures::stream::iter(out)
                })
                .boxed()
        });
        let merged = futures::stream::select_all(per_choice);
        let usage_chunk = move |usage: Value| {
            json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": fingerprint(), "choices": [], "usage": usage })
        };
        let mut resp = sse_response(merged.chain(usage_tail(tally, plan.include_usage, usage_chunk)));
        super::mark(&mut resp, &plan.model, Some(&info));
        return Ok(resp);
    }
    let results = futures::future::join_all(generations.into_iter().map(|g| finish(g, None))).await;
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (index, r) in results.into_iter().enumerate() {
        let f = r?;
        prompt_tokens += f.completion.prompt_tokens;
        completion_tokens += f.completion.eval_tokens;
        let lead = if echo { prompts[index / n].as_str() } else { "" };
        let logprobs = if f.logprobs.is_empty() { Value::Null } else { text_logprobs(&f.logprobs, lead.len()) };
        choices.push(json!({ "index": index, "text": format!("{lead}{}", f.text), "logprobs": logprobs,
                             "finish_reason": finish_reason(f.completion.reason) }));
    }
    let mut body = json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": fingerprint(), "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
    });
    super::ollama::annotate(&mut body, &info);
    let mut resp = Json(body).into_response();
    super::mark(&mut resp, &plan.model, Some(&info));
    Ok(resp)
}

/// The legacy completions `logprobs` object: tokens, their logprobs, top alternatives as
/// maps, and each token's character offset in the text.
fn text_logprobs(lps: &[TokenLogprob], start: usize) -> Value {
    let mut offset = start;
    let (mut tokens, mut token_logprobs, mut top, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for lp in lps {
        let t = String::from_utf8_lossy(&lp.bytes).into_owned();
        offsets.push(offset);
        offset += t.len();
        tokens.push(t);
        token_logprobs.push(lp.logprob);
        let alternatives: Map<String, Value> = lp.top.iter().map(|(b, l)| (String::from_utf8_lossy(b).into_owned(), json!(l))).collect();
        top.push(Value::Object(alternatives));
    }
    json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets })
}

// ---------------------------------------------------------------- /v1/embeddings

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Option<Value>,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
    #[allow(dead_code)] // accepted, as OpenAI's API does.
    user: Option<String>,
    num_ctx: Option<i64>,
    keep_alive: Option<Value>,
}

/// Most inputs one embeddings request may carry.
const MAX_EMBED_INPUTS: usize = 2048;

async fn embeddings(State(app): State<AppState>, OpenAiJson(req): OpenAiJson<EmbeddingsRequest>) -> OaiResult<Response> {
    let model = req.model.filter(|m| !m.is_empty()).ok_or_else(|| invalid("model", "model is required"))?;
    let bad_input = || invalid("input", "input must be a string, a list of strings, a list of token ids, or a list of such lists");
    let token_ids = |items: &[Value]| -> Option<Vec<i32>> { items.iter().map(|t| t.as_i64().and_then(|t| i32::try_from(t).ok())).collect() };
    let inputs: Vec<service::EmbedInput> = match req.input {
        Some(Value::String(s)) => vec![service::EmbedInput::Text(s)],
        Some(Value::Array(items)) if items.is_empty() => return Err(invalid("input", "input must not be empty")),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.into_iter().filter_map(|v| v.as_str().map(|s| service::EmbedInput::Text(s.to_string()))).collect()
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => vec![service::EmbedInput::Tokens(token_ids(&items).ok_or_else(bad_input)?)],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_array().and_then(|a| token_ids(a)).map(service::EmbedInput::Tokens).ok_or_else(bad_input))
            .collect::<OaiResult<_>>()?,
        _ => return Err(bad_input()),
    };
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(invalid("input", format!("at most {MAX_EMBED_INPUTS} inputs per request")));
    }
    if inputs.iter().any(|i| matches!(i, service::EmbedInput::Text(t) if t.is_empty())) {
        return Err(invalid("input", "inputs must not be empty strings"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(invalid("encoding_format", format!("encoding_format must be float or base64, not {other:?}"))),
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        Some(d) => return Err(invalid("dimensions", format!("dimensions must be a positive integer, not {d}"))),
    };
    let mut o = Map::new();
    if let Some(c) = req.num_ctx {
        o.insert("num_ctx".into(), json!(c));
    }
    let raw_options = RawOptions::from_json(&Value::Object(o)).map_err(|e| invalid("num_ctx", e.to_string()))?;
    let options = raw_options.validate(app.manager.defaults().num_ctx).map_err(|e| invalid("num_ctx", e.to_string()))?;
    let keep_alive = keep_alive(req.keep_alive.as_ref())?;
    let valid = service::ValidEmbedRequest {
        model: model.clone(),
        inputs,
        truncate: true,
        dimensions,
        normalize: true,
        options,
        raw_options,
        keep_alive,
    };
    let result = app.service.embed(valid, Caller::Network)
        .await
        .map_err(|e| service_error(e, Some("input")))?;
    let data: Vec<Value> = result
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens = result.prompt_tokens;
    Ok(Json(json!({ "object": "list", "data": data, "model": model, "usage": { "prompt_tokens": tokens, "total_tokens": tokens } })).into_response())
}

// ---------------------------------------------------------------- /v1/models

fn model_object(e: &crate::store::ModelEntry) -> Value {
    let created = e.modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({ "id": e.name, "object": "model", "created": created, "owned_by": e.origin.as_str() })
}

async fn list_models(State(app): State<AppState>) -> Response {
    let store = app.manager.store().clone();
    match tokio::task::spawn_blocking(move || store.list()).await {
        Ok(Ok(list)) => Json(json!({ "object": "list", "data": list.iter().map(model_object).collect::<Vec<_>>() })).into_response(),
        Ok(Err(e)) => OpenAiError::from(ApiError::from(e)).into_response(),
        Err(e) => OpenAiError::from(ApiError::internal(format!("listing failed: {e}"))).into_response(),
    }
}

async fn get_model(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let store = app.manager.store().clone();
    let result = tokio::task::spawn_blocking(move || store.resolve(&id)).await;
    match result {
        Ok(Ok(e)) => Json(model_object(&e)).into_response(),
        Ok(Err(e)) => OpenAiError { error: e.into(), param: Some("model") }.into_response(),
        Err(e) => OpenAiError::from(ApiError::internal(format!("lookup failed: {e}"))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(v: Value) -> OaiResult<Plan> {
        let s: Sampling = serde_json::from_value(v).expect("parses");
        s.plan(2048)
    }

    #[test]
    fn sampling_fields_map_to_options() {
        let p = plan(json!({"model": "m", "max_tokens": 7, "temperature": 0, "stop": ["x"], "seed": 3, "n": 2})).ok().expect("valid");
        assert_eq!(p.options.num_predict, crate::engine::options::PredictLimit::Tokens(7));
        assert_eq!(p.options.temperature, 0.0);
        assert_eq!(p.options.stop, vec!["x".to_string()]);
        assert_eq!(p.n, 2);
    }

    #[test]
    fn out_of_range_fields_name_the_param() {
        for (v, param) in [
            (json!({"model": "m", "n": 0}), "n"),
            (json!({"model": "m", "max_tokens": 0}), "max_tokens"),
            (json!({"model": "m", "temperature": 3}), "temperature"),
            (json!({"model": "m", "stop": 5}), "stop"),
            (json!({}), "model"),
        ] {
            let err = plan(v).err().expect("invalid");
            assert_eq!(err.param, Some(param));
            assert_eq!(err.body()["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn tool_choice_needs_tools_and_grammars_need_valid_schemas() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"})).expect("parses");
        assert_eq!(req.validate(2048).err().expect("invalid").param, Some("tool_choice"));
        let req: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}})).expect("parses");
        let err = req.validate(2048).err().expect("invalid");
        assert_eq!(err.param, Some("response_format"));
        assert!(err.error.message.contains("schema.type"), "{}", err.error.message);
    }
}
